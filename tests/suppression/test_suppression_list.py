"""The do-not-contact list itself: one entry per person however the address is written, scoped
installation-wide or to one identity, idempotent, and looked up in a batch for a lead."""

from __future__ import annotations

import pytest

from parley import suppression
from parley.db import Database
from parley.db.models import Identity
from parley.errors import InvalidInput, NotFound


@pytest.mark.parametrize(
    ("raw", "kind", "address"),
    [
        ("  Ana.Lopez@Example.COM ", "email", "ana.lopez@example.com"),
        ("mailto:ana@example.com", "email", "ana@example.com"),
        ("jose@bücher.example", "email", "jose@xn--bcher-kva.example"),
        ("+34 600 111 222", "phone", "+34600111222"),
        ("0034-600-111-222", "phone", "+34600111222"),
        ("34600111222", "phone", "+34600111222"),
        ("tel:+1 (555) 010-2030", "phone", "+15550102030"),
        (
            "https://www.linkedin.com/in/Ana-Lopez/",
            "linkedin",
            "https://www.linkedin.com/in/ana-lopez",
        ),
        ("linkedin.com/in/ana-lopez?trk=x", "linkedin", "https://www.linkedin.com/in/ana-lopez"),
        (
            "http://es.linkedin.com/in/ana%2Dlopez",
            "linkedin",
            "https://www.linkedin.com/in/ana-lopez",
        ),
    ],
)
def test_one_person_is_one_address_however_it_is_written(raw: str, kind: str, address: str) -> None:
    assert suppression.normalise(raw) == (kind, address)


@pytest.mark.parametrize(
    "raw", ["not an address", "ana@", "+12", "https://www.linkedin.com/company/acme", ""]
)
def test_what_is_not_an_address_is_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(InvalidInput):
        suppression.normalise(raw)
    assert suppression.try_normalise(raw) is None


async def _identities(db: Database) -> tuple[int, int]:
    async with db.transaction() as session:
        one = Identity(channel="email", address="seat1@example.com")
        two = Identity(channel="email", address="seat2@example.com")
        session.add_all([one, two])
        await session.flush()
        return one.id, two.id


async def test_an_installation_wide_entry_covers_every_identity(db: Database) -> None:
    one, two = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(session, "ANA@example.com", "unsubscribed", by="test")
    async with db.transaction() as session:
        for identity in (one, two):
            found = await suppression.suppressed_among(
                session, identity, ["ana@EXAMPLE.com", "bob@example.com"]
            )
            assert list(found) == ["ana@EXAMPLE.com"]
            assert found["ana@EXAMPLE.com"].reason == "unsubscribed"
            assert found["ana@EXAMPLE.com"].identity_id is None


async def test_an_identity_entry_covers_only_that_identity(db: Database) -> None:
    one, two = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(
            session, "+34 600 111 222", "replied: not interested", identity_id=one, note="call"
        )
    async with db.transaction() as session:
        assert list(await suppression.suppressed_among(session, one, ["34600111222"])) == [
            "34600111222"
        ]
        assert await suppression.suppressed_among(session, two, ["34600111222"]) == {}


async def test_a_lead_is_looked_up_by_all_its_addresses_at_once(db: Database) -> None:
    one, _ = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(session, "https://linkedin.com/in/Marta", "manual")
        await suppression.add(session, "marta@example.com", "bounced", identity_id=one)
    lead = ["https://www.linkedin.com/in/marta/", "Marta@Example.com", "+44 20 7946 0000", "x"]
    async with db.transaction() as session:
        found = await suppression.suppressed_among(session, one, lead)
    assert {raw: entry.reason for raw, entry in found.items()} == {
        "https://www.linkedin.com/in/marta/": "manual",
        "Marta@Example.com": "bounced",
    }


async def test_the_installation_wide_entry_wins_when_both_scopes_have_the_address(
    db: Database,
) -> None:
    one, _ = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(session, "ana@example.com", "manual", identity_id=one)
        await suppression.add(session, "ana@example.com", "complained")
    async with db.transaction() as session:
        found = await suppression.suppressed_among(session, one, ["ana@example.com"])
    assert found["ana@example.com"].reason == "complained"


async def test_suppressing_an_address_twice_keeps_the_first_entry(db: Database) -> None:
    one, _ = await _identities(db)
    async with db.transaction() as session:
        first, created = await suppression.add(session, "ana@example.com", "bounced")
        assert created
    async with db.transaction() as session:
        again, created = await suppression.add(session, "ANA@example.com", "manual", note="x")
        assert not created
        assert (again.id, again.reason) == (first.id, "bounced")
        _, created = await suppression.add(session, "ana@example.com", "manual", identity_id=one)
        assert created
    async with db.transaction() as session:
        assert len(await suppression.list_suppressions(session)) == 2


async def test_removing_takes_the_address_off_its_own_scope_only(db: Database) -> None:
    one, _ = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(session, "ana@example.com", "manual")
        await suppression.add(session, "ana@example.com", "manual", identity_id=one)
    async with db.transaction() as session:
        await suppression.remove(session, "Ana@Example.com", identity_id=one)
    async with db.transaction() as session:
        assert await suppression.suppressed_among(session, one, ["ana@example.com"])
        await suppression.remove(session, "ana@example.com")
    async with db.transaction() as session:
        assert await suppression.suppressed_among(session, one, ["ana@example.com"]) == {}
        with pytest.raises(NotFound):
            await suppression.remove(session, "ana@example.com")


async def test_listing_for_an_identity_shows_what_applies_to_it(db: Database) -> None:
    one, two = await _identities(db)
    async with db.transaction() as session:
        await suppression.add(session, "all@example.com", "manual")
        await suppression.add(session, "one@example.com", "manual", identity_id=one)
        await suppression.add(session, "two@example.com", "manual", identity_id=two)
    async with db.transaction() as session:
        everything = await suppression.list_suppressions(session)
        for_one = await suppression.list_suppressions(session, one)
    assert len(everything) == 3
    assert [s.address for s in for_one] == ["all@example.com", "one@example.com"]


async def test_bad_input_is_refused_and_nothing_is_stored(db: Database) -> None:
    async with db.transaction() as session:
        with pytest.raises(InvalidInput, match="unknown reason"):
            await suppression.add(session, "ana@example.com", "annoying")
        with pytest.raises(InvalidInput):
            await suppression.add(session, "nobody", "manual")
        with pytest.raises(NotFound, match="identity 999"):
            await suppression.add(session, "ana@example.com", "manual", identity_id=999)
    async with db.transaction() as session:
        assert await suppression.list_suppressions(session) == []
