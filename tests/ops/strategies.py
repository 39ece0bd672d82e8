"""Hypothesis strategies shared by the ops tests: random batch layouts and compression ratios."""

from hypothesis import strategies as st

from vtc.layout import VisualSpan

RATIOS = st.sampled_from([1, 2, 3, 4, 9, 16])


@st.composite
def _spans(draw) -> tuple[tuple[VisualSpan, ...], int]:
    """One sample's spans (0-3, each after a random text gap) and the position just past its last token."""
    spans, end = [], 0
    for _ in range(draw(st.integers(0, 3))):
        start = end + draw(st.integers(0, 4))
        kind = draw(st.sampled_from(["grid", "newline", "flat"]))
        if kind == "flat":
            span = VisualSpan(start, draw(st.integers(1, 20)))
        else:
            h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
            newline = kind == "newline"
            span = VisualSpan(start, h * (w + 1) if newline else h * w, (h, w), newline)
        spans.append(span)
        end = span.end
    return tuple(spans), end + draw(st.integers(0, 3))


def _shift(spans: tuple[VisualSpan, ...], offset: int) -> tuple[VisualSpan, ...]:
    return tuple(VisualSpan(s.start + offset, s.length, s.grid, s.newline) for s in spans)


@st.composite
def batch_layouts(draw) -> tuple[list[tuple[VisualSpan, ...]], int]:
    """`(layout, seq_len)`: 1-3 samples padded to a common length, left-padded (right-aligned) or right-padded."""
    samples = [draw(_spans()) for _ in range(draw(st.integers(1, 3)))]
    seq_len = max(end for _, end in samples) + draw(st.integers(0, 2))
    if draw(st.booleans()):  # left padding: the leading gap of each sample plays the padding tokens
        return [_shift(spans, seq_len - end) for spans, end in samples], seq_len
    return [spans for spans, _ in samples], seq_len
