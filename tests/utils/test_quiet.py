"""knet.utils.quiet: a library's prints kept out of the user's log."""
from knet.utils.quiet import quiet_stdout


def test_prints_inside_are_dropped_and_stdout_comes_back(capsys):
    print("before")
    with quiet_stdout():
        print("pycocotools: index created!")
    print("after")
    assert capsys.readouterr().out == "before\nafter\n"
