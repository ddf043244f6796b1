"""What a command prints: darec's messages once, to the stderr of the moment; library chatter only with --verbose."""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stderr

import pytest

from darec.output import LIGHTNING_CHATTER, command_output

DAREC = logging.getLogger("darec")
RANK_ZERO = logging.getLogger("lightning.pytorch.utilities.rank_zero")


def test_messages_go_to_the_current_stderr_once_and_nothing_is_left_behind():
    before = (list(DAREC.handlers), DAREC.level, DAREC.propagate)
    first, second = io.StringIO(), io.StringIO()
    with command_output():
        with redirect_stderr(first):
            logging.getLogger("darec.data.prepare").info("wrote it")
        first.close()  # a test's capture or a notebook cell ends; the handler must not hold on to it
        with redirect_stderr(second):
            logging.getLogger("darec.search.loop").warning("trial 1 failed")
    assert second.getvalue() == "warning: trial 1 failed\n"
    assert (list(DAREC.handlers), DAREC.level, DAREC.propagate) == before


def test_verbose_names_level_and_logger():
    err = io.StringIO()
    with redirect_stderr(err), command_output(verbose=True):
        logging.getLogger("darec.demo").info("hello")
    assert err.getvalue() == "INFO darec.demo: hello\n"


@pytest.mark.parametrize("verbose", [False, True])
def test_lightning_chatter_hidden_unless_verbose(verbose, caplog):
    with caplog.at_level(logging.INFO, logger=RANK_ZERO.name):
        with command_output(verbose):
            RANK_ZERO.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            RANK_ZERO.info("GPU available: False, used: False")
            RANK_ZERO.info("Restoring states from the checkpoint path at best.ckpt")
        RANK_ZERO.info("💡 Tip: outside a command nothing is filtered")
    messages = [r.getMessage() for r in caplog.records if r.name == RANK_ZERO.name]
    assert "Restoring states from the checkpoint path at best.ckpt" in messages
    assert len([m for m in messages if m.startswith(LIGHTNING_CHATTER)]) == (3 if verbose else 1)


@pytest.mark.parametrize("verbose", [False, True])
def test_known_library_deprecation_hidden_unless_verbose(verbose):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with command_output(verbose):
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ... instead.", FutureWarning)
            warnings.warn("our own warning stays", UserWarning)
    shown = [str(w.message) for w in caught]
    assert shown[-1] == "our own warning stays" and len(shown) == (2 if verbose else 1)
