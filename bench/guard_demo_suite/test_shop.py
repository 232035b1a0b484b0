from __future__ import annotations

import os

import pytest

#: every test this many times (bench/pytest_guard.py --repeat): a longer suite, the same start-up
REPEAT = int(os.environ.get("DEMO_SUITE_REPEAT", "1"))


@pytest.mark.parametrize("attempt", range(10 * REPEAT))
def test_health(client, attempt: int) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("product_id", [1 + i % 60 for i in range(60 * REPEAT)])
def test_product(client, product_id: int) -> None:  # type: ignore[no-untyped-def]
    assert client.get(f"/products/{product_id}").json["name"]


@pytest.mark.parametrize(
    "term", ["steel", "oak", "linen", "smart", "mini", "pro", "eco", "red", "blue", "classic"] * REPEAT
)
def test_search(client, term: str) -> None:  # type: ignore[no-untyped-def]
    assert client.get(f"/search?q={term}").json["count"] > 0


@pytest.mark.parametrize("attempt", range(5 * REPEAT))
def test_orders(client, attempt: int) -> None:  # type: ignore[no-untyped-def]
    assert len(client.get("/orders").json) == 20


@pytest.mark.parametrize("customer_id", [1 + i % 20 for i in range(20 * REPEAT)])
def test_checkout(client, customer_id: int) -> None:  # type: ignore[no-untyped-def]
    expected = 500 if customer_id % 5 == 0 else 200
    assert client.post(f"/checkout/{customer_id}").status_code == expected
