"""Errors that mean "the input is wrong", as opposed to a bug: the command line prints
their message (which names the key, file or value at fault) without a traceback."""


class UserError(ValueError):
    """A parameter, model, corpus or file that prunepipe cannot use; the message says why."""
