"""The JSONC reader used for ``.code-workspace`` files."""

from __future__ import annotations

import pytest

from blueplane.cursor.jsonc import loads_jsonc, strip_jsonc


def test_comments_and_trailing_commas_are_dropped():
    text = """{
      // a line comment
      "folders": [ {"path": "a"}, /* block */ {"path": "b"}, ],
    }"""
    assert loads_jsonc(text) == {"folders": [{"path": "a"}, {"path": "b"}]}


def test_comment_markers_inside_strings_are_kept():
    text = '{"url": "http://x/*y*/", "q": "say \\"//hi\\""}'
    assert loads_jsonc(text) == {"url": "http://x/*y*/", "q": 'say "//hi"'}


def test_unterminated_block_comment_ends_the_text():
    assert strip_jsonc('{"a": 1} /* open') == '{"a": 1} '


def test_invalid_json_raises_value_error():
    with pytest.raises(ValueError):
        loads_jsonc("{oops")
