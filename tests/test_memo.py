"""kit.memo.BoundedMemo: computed once per key, least recently used dropped first."""
import pytest

from kit.memo import BoundedMemo


def test_bounded_memo_keeps_the_recent_keys():
    calls = []

    def make(k):
        return lambda: calls.append(k) or k * 10

    memo = BoundedMemo(2)
    assert memo.get(1, make(1)) == 10 and memo.get(1, make(1)) == 10
    memo.get(2, make(2))
    memo.get(1, make(1))          # 1 is now the most recent
    memo.get(3, make(3))          # drops 2
    assert len(memo) == 2
    memo.get(1, make(1))
    memo.get(2, make(2))
    assert calls == [1, 2, 3, 2]
    with pytest.raises(ValueError):
        BoundedMemo(0)
