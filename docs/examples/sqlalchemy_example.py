"""Every committed change of a SQLAlchemy model as an audit event (docs/sqlalchemy.md).

make run                                    # in one terminal: auditq and its servers
.venv/bin/pip install -e '.[sqlalchemy]'    # in another
.venv/bin/python docs/examples/sqlalchemy_example.py
"""

import asyncio

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from service.client import AuditClient
from service.events import Actor
from service.producer.context import set_actor
from service.producer.sqlalchemy import Audited, capture_changes
from service.settings import Settings


class Base(DeclarativeBase):
    pass


class Asset(Audited, Base):  # opted in: its rows are the entity "asset"
    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    location: Mapped[str | None]
    owner: Mapped[str | None]


def change_assets() -> int:
    engine = create_engine("sqlite://")  # the application's own database (here in memory)
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        laptop = Asset(name="Laptop", location="HQ")
        session.add(laptop)
        session.commit()  # asset.created

        laptop.location, laptop.owner = "Oslo", "ann"
        session.commit()  # asset.updated: location and owner

        laptop.name = "Broken laptop"
        session.flush()
        session.rollback()  # rolled back: no event

        session.delete(laptop)
        session.commit()  # asset.deleted
        return laptop.id


async def main() -> None:
    # The URLs of `make run` (.auditq/env) or of AUDITQ_REDIS_URL and AUDITQ_QUEUE.
    client = AuditClient.from_settings(Settings.from_env())
    capture = capture_changes(client, source="inventory")  # every Session, AsyncSession too
    set_actor(Actor(id="u-42", type="user"))  # what the aiohttp middleware does per request

    # Sync database code runs off the event loop, as in any async service.
    asset_id = await asyncio.to_thread(change_assets)

    capture.remove()
    await client.aclose()  # sends what is buffered
    print(f"history: GET /api/v1/admin/audit-logs/entity/asset/{asset_id}")


if __name__ == "__main__":
    asyncio.run(main())
