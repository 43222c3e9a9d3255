"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _library_logs_to_real_stderr():
    """transformers' log handler keeps the stream it was made with; made inside a CliRunner call, that stream is closed
    by the next call ("--- Logging error ---" in a later test's output, whichever module runs first). Make the handler
    here, once, before any test, and bind it to the real stderr."""
    import logging as std_logging
    import sys

    from transformers.utils import logging

    for handler in logging.get_logger().handlers:  # the library root logger ("transformers")
        if type(handler) is std_logging.StreamHandler:  # not pytest's capture handlers, which must keep their buffer
            handler.stream = sys.__stderr__  # not setStream: it flushes the old stream, which may be closed already
