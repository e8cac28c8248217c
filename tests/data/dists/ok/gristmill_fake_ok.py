"""A well-formed third-party plugin: a .lines source (one text record per line)."""

from gristmill import hookimpl
from gristmill.plugin.components import SourceType, Where


class LinesSource:
    def __init__(self, spec, **options):
        self.spec = spec

    def split(self, pieces):
        return [self]

    def records(self):
        with open(self.spec, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield {"text": line.rstrip("\n")}, Where(self.spec, number)

    def fingerprint(self):
        return self.spec


@hookimpl
def gristmill_sources():
    return [SourceType(name="lines", description="one text per line", suffixes=(".lines",), factory=LinesSource)]
