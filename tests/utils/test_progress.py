"""The progress bar: plain lines when stderr is not a terminal."""


def test_progress_bar_lines_when_not_a_terminal():
    import io

    from knet.utils import ProgressBar, track

    stream = io.StringIO()
    with ProgressBar(total=20, desc="test", stream=stream) as bar:
        for _ in range(20):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # one per tenth of the way, and the start
    assert lines[-1].startswith("test: 100% |") and "20/20" in lines[-1]
    silent = io.StringIO()
    with ProgressBar(total=3, stream=silent, enabled=False) as bar:
        bar.update(3)
    assert silent.getvalue() == ""
    assert list(track(range(3), enabled=False)) == [0, 1, 2]
