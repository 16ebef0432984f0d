"""The one exception type that means "the user can fix this": stages turn it into a short message and exit 2."""


class UserError(Exception):
    """A problem in params, data, model files or the environment that the user can fix; the message says how."""
