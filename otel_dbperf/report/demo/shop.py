"""A small shop: the app ``otel-dbperf demo`` runs, unchanged, under opentelemetry-instrument.

It has the problems otel-dbperf is for: a ``LIKE '%term%'`` search over a large
table (a full scan), an ORM N+1 on /orders, ordinary fast routes, and a checkout
whose payment provider declines some customers (every fifth one: the same
customers in every worker process, so the demo's 500s do not depend on which
gunicorn worker serves a request).

``SHOP_VARIANT`` switches the code for before/after runs (``otel-dbperf report --baseline``):
``n+1-fixed`` loads /orders' orders with ``selectinload`` (one query instead of one per
customer); ``slow-query`` adds a new slow query to /products/<id> (a full scan counting
the products whose description mentions it). Unset: the shop as described above.
"""

from __future__ import annotations

import os
import random
import sys

from flask import Flask, jsonify, request
from sqlalchemy import ForeignKey, String, create_engine, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

engine = create_engine(os.environ.get("SHOP_DB_URL", "sqlite:///shop.db"))
VARIANT = os.environ.get("SHOP_VARIANT", "")


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(500))


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    customer: Mapped[Customer] = relationship(back_populates="orders")


def seed(products: int = 400_000) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rng = random.Random(7)
    words = ["red", "blue", "steel", "oak", "linen", "smart", "mini", "pro", "eco", "classic"]
    with engine.begin() as conn:
        conn.execute(insert(Customer), [{"id": i, "name": f"customer {i}"} for i in range(1, 41)])
        for start in range(0, products, 50_000):
            conn.execute(
                insert(Product),
                [
                    {"name": " ".join(rng.choices(words, k=3)), "description": " ".join(rng.choices(words, k=28))}
                    for _ in range(start, min(products, start + 50_000))
                ],
            )
        conn.execute(
            insert(Order), [{"customer_id": rng.randint(1, 40), "product_id": rng.randint(1, 1000)} for _ in range(400)]
        )


app = Flask(__name__)


@app.get("/health")
def health():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/products/<int:product_id>")
def product(product_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        found = session.get(Product, product_id)
        if found and VARIANT == "slow-query":
            mentions = session.scalar(select(func.count()).where(func.lower(Product.description).contains(found.name)))
            return jsonify(name=found.name, mentions=mentions)
        return jsonify(name=found.name if found else None)


@app.get("/search")
def search():  # type: ignore[no-untyped-def]
    term = request.args.get("q", "steel")
    with Session(engine) as session:
        count = session.scalar(select(func.count()).where(Product.description.like(f"%{term}%")))
    return jsonify(term=term, count=count)


@app.get("/orders")
def orders():  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        query = select(Customer).order_by(Customer.id).limit(20)
        if VARIANT == "n+1-fixed":
            query = query.options(selectinload(Customer.orders))
        customers = session.scalars(query).all()
        return jsonify([{"customer": c.name, "orders": len(c.orders)} for c in customers])


DECLINED_EVERY = 5  # the payment provider declines customers 5, 10, 15, ...


@app.post("/checkout/<int:customer_id>")
def checkout(customer_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        customer = session.get(Customer, customer_id)
        if customer is None or customer_id % DECLINED_EVERY == 0:
            raise RuntimeError("payment declined")
        session.add(Order(customer_id=customer_id, product_id=1))
        session.commit()
    return jsonify(ok=True)


if __name__ == "__main__":
    seed(int(sys.argv[1]) if len(sys.argv) > 1 else 400_000)
