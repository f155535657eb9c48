"""Tests in a real headless Chromium (marked ``browser``); fixtures in :mod:`tests.web.browser`."""
