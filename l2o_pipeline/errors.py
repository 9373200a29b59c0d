"""User errors: inputs a user can fix, reported as one message without a Python traceback.

An exception is a user error when it (or an exception it was raised ``from``) is one of
:data:`USER_ERRORS`, or when an OSError of a disk that is full, read-only, not writable or a
path through a file (:data:`USER_ERRNOS`) is anywhere in its chain (torch.save on a full disk
raises a RuntimeError while handling the OSError). Everything else is a bug and keeps its
traceback. :func:`user_error_message` decides and words the message; the console entrypoint
(``l2o_pipeline.main``) prints it and exits with :data:`USER_ERROR_EXIT`.
"""

from __future__ import annotations

import errno
import os

from hydra.errors import CompactHydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

USER_ERROR_EXIT = 2  # as argparse: the command line or its inputs are wrong


class UserError(ValueError):
    """Base of the errors a user fixes in their input: a config value, a file, a folder.

    The message names the key or file and what would be valid."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk (and could not be downloaded).

    A FileNotFoundError, as callers expect of a missing file: it cannot also be a UserError
    (a ValueError), hence its own entry in USER_ERRORS."""


# Hydra's "compact" exceptions are its own user errors (unknown or mistyped override, bad
# override grammar, missing config group option, missing --config-dir): it prints them without
# a traceback too. OmegaConf's: a mandatory value left out, a bad interpolation.
USER_ERRORS = (UserError, DatasetNotFoundError, CompactHydraException, MissingMandatoryValue,
               InterpolationResolutionError, GrammarParseError)

# The errnos of a disk or path the user chose badly, with what the OS's own words leave out.
USER_ERRNOS = {
    errno.EROFS: "",
    errno.EACCES: "",
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file, where a folder is needed",
}


def user_error_message(exc: BaseException, path_hint: str = "") -> str | None:
    """The message to print for a user error, or None when ``exc`` is a bug. ``path_hint``
    follows the message of an OSError: which setting chooses the path."""
    for cause in _chain(exc, follow_context=False):
        if isinstance(cause, USER_ERRORS):
            return _describe(cause)
    for cause in _chain(exc, follow_context=True):
        if isinstance(cause, OSError) and _is_user_os_error(cause):
            return _describe_os_error(cause) + (f"; {path_hint}" if path_hint else "")
    return None


def _chain(exc: BaseException, follow_context: bool):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (exc.__context__ if follow_context else None)


def _is_user_os_error(exc: OSError) -> bool:
    if exc.errno == errno.EEXIST:  # mkdir(exist_ok=True) on a file; not a race between folders
        return exc.filename is not None and not os.path.isdir(exc.filename)
    return exc.errno in USER_ERRNOS


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename is not None else ""
    detail = f" ({USER_ERRNOS[exc.errno]})" if USER_ERRNOS[exc.errno] else ""
    return f"{where}{exc.strerror or exc}{detail}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OmegaConfBaseException):
        return _describe_omegaconf(exc)
    if isinstance(exc, CompactHydraException):
        # Hydra's advice for an unknown key ("To append to your config use +key=value")
        # would add a key that nothing reads: leave it out, list the valid keys instead.
        text = "\n".join(line for line in str(exc).splitlines()
                         if not line.startswith("To append to your config use"))
        if isinstance(exc, OverrideParseException):
            text = f"{exc.override}: {text}"
        if isinstance(exc.__cause__, OmegaConfBaseException):
            text = f"{text.rstrip('.')}: {_describe_omegaconf(exc.__cause__, text)}"
        return text
    return str(exc)


def _describe_omegaconf(exc: OmegaConfBaseException, context: str = "") -> str:
    """OmegaConf's own first line, the key (unless ``context`` names it already), and for an
    unknown key the keys that exist."""
    text = (exc.msg or str(exc)).splitlines()[0]
    key = getattr(exc, "full_key", None)
    if key and key not in text + context:
        text += f" (key {key})"
    parent = getattr(exc, "parent_node", None)
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and isinstance(parent, DictConfig):
        text += f"; valid keys here: {', '.join(sorted(str(k) for k in parent))}"
    return text
