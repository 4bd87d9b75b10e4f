"""Notification's own table: every notice it sends, at most one of each kind per saga."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Metadata of the notification database."""


class Notice(Base):
    """A confirmation or cancellation notice for one saga's customer."""

    __tablename__ = "notices"
    __table_args__ = (UniqueConstraint("saga_id", "kind", name="uq_notices_saga_kind"),)

    notice_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    saga_id: Mapped[str] = mapped_column(String(36), nullable=False)
    order_id: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    recipient: Mapped[str] = mapped_column(String(254), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
