"""Tests for :mod:`dispatcher.scheduling`."""
