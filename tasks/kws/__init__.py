"""Keyword-spotting task: Speech-Commands-layout clips, log-mel features, DS-CNN."""
