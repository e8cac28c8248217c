"""A plugin that registers an invalid component name."""

from gristmill import hookimpl
from gristmill.plugin.components import PackerType


@hookimpl
def gristmill_packers():
    return [PackerType(name="Best Fit!", description="invalid name", factory=object)]
