"""gristmill's conformance kit over the exporter: every split exported, the same bytes twice."""

from gristmill.testing import conformance

test_conformance = conformance("megatron")
