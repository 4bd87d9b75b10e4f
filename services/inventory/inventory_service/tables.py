"""Inventory's own tables: stock per SKU and reservations per saga."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Metadata of the inventory database."""


class Stock(Base):
    """Units available to reserve, per SKU."""

    __tablename__ = "stock"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    available: Mapped[int] = mapped_column(Integer, nullable=False)


class Reservation(Base):
    """Stock set aside for one saga."""

    __tablename__ = "reservations"

    saga_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reservation_id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    order_id: Mapped[str] = mapped_column(String(100), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReservationLine(Base):
    """One SKU and quantity of a reservation."""

    __tablename__ = "reservation_lines"

    reservation_id: Mapped[str] = mapped_column(
        ForeignKey("reservations.reservation_id"), primary_key=True
    )
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
