"""The span resolver: the latest version of every span (or of the newest N), for ExampleGen's
input when a retrain trains on all the curated spans."""

from typing import Any

from tfx.dsl.components.common.resolver import ResolverStrategy


def _int_property(item: Any, name: str) -> int:
    return item.get_int_custom_property(name) if item.has_custom_property(name) else 0


def span_of(examples: Any) -> int:
    """An Examples artifact's span: ExampleGen keeps it as a custom property (0 when it has none)."""
    return _int_property(examples, "span")


class LatestVersionPerSpanStrategy(ResolverStrategy):
    """All spans (or the newest `num_spans`), one Examples artifact each: the newest one.

    TFX's SpanRangeStrategy returns every artifact in range, so a re-run of ExampleGen over an
    unchanged span would count its faces twice in training.
    """

    def __init__(self, num_spans: int = 0):
        self._num_spans = int(num_spans)

    def resolve_artifacts(self, store, input_dict):
        result = {}
        for key, artifacts in input_dict.items():
            newest: dict[int, Any] = {}
            for candidate in artifacts:
                span = _int_property(candidate, "span")
                current = newest.get(span)
                if current is None or (_int_property(candidate, "version"), candidate.id) > (
                    _int_property(current, "version"),
                    current.id,
                ):
                    newest[span] = candidate
            spans = sorted(newest, reverse=True)
            if self._num_spans > 0:
                spans = spans[: self._num_spans]
            result[key] = [newest[s] for s in spans]
        return result
