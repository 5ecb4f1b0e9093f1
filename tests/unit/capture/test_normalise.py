"""Normalisers: pure functions over Series."""

from datetime import UTC, datetime

import pandas as pd
import pytest

from leadflow.capture import normalise as nz

pytestmark = pytest.mark.unit  # no database, no Prefect server

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def values(*items):
    return pd.Series(list(items), dtype=object)


def test_email_trimmed_lowercased_and_idna_encoded():
    out, _ = nz.normalise_email(
        values(" John.Doe@Example.COM ", "mailto:A@B.io", "a@bücher.de", None)
    )
    assert out.tolist() == ["john.doe@example.com", "a@b.io", "a@xn--bcher-kva.de", None]


def test_names_fix_shouting_but_keep_mixed_case():
    out, _ = nz.normalise_name(values("JOHN", "mary  ann", "McDonald", "  ", None))
    assert out.tolist() == ["John", "Mary Ann", "McDonald", None, None]


def test_phone_e164_read_in_the_leads_country():
    out, invalid = nz.normalise_phone(
        values("+1 415 555 0100", "020 7946 0018", "call me", "030 1234567", None),
        values("US", "GB", "US", "DE", None),
    )
    assert out.tolist() == ["+14155550100", "+442079460018", None, "+49301234567", None]
    assert invalid.tolist() == [False, False, True, False, False]


def test_phone_regions_may_be_missing_in_any_form():
    regions = pd.Series(["US", None, float("nan"), pd.NA], dtype=object)
    out, invalid = nz.normalise_phone(
        values("+1 415 555 0100", "+44 20 7946 0018", "020 7946 0018", "+49 30 1234567"), regions
    )
    assert out.tolist() == ["+14155550100", "+442079460018", None, "+49301234567"]
    assert invalid.tolist() == [False, False, True, False]


def test_phone_without_prefix_or_country_is_invalid_unless_a_default_region():
    out, invalid = nz.normalise_phone(values("(415) 555-0100"), values(None))
    assert invalid.tolist() == [True]
    out, invalid = nz.normalise_phone(values("(415) 555-0100"), values(None), default_region="US")
    assert out.tolist() == ["+14155550100"]


def test_country_codes_names_and_variants():
    out, invalid = nz.normalise_country(
        values(
            "uk",
            "U.S.A.",
            "Deutschland",
            "Narnia",
            "fr",
            "Côte d’Ivoire",
            "The Netherlands",
            "DEU",
            None,
        )
    )
    assert out.tolist()[:3] == ["GB", "US", "DE"]
    assert pd.isna(out[3]) and invalid[3]
    assert out.tolist()[4:8] == ["FR", "CI", "NL", "DE"]
    assert not invalid[8]


def test_website_to_host():
    out, invalid = nz.normalise_website(
        values(
            "https://www.Acme.com/about?x=1", "acme", "http://shop.acme.co.uk:8080/", "münchen.de"
        )
    )
    assert out.tolist()[0] == "acme.com"
    assert invalid.tolist() == [False, True, False, False]
    assert out[2] == "shop.acme.co.uk" and out[3] == "xn--mnchen-3ya.de"
    assert nz.registered_domain("shop.acme.co.uk") == "acme.co.uk"


def test_timestamps_to_utc_with_epochs_naive_and_future():
    out, invalid = nz.normalise_timestamp(
        values(
            "2024-01-05T10:00:00Z",
            "2024-01-05 10:00",
            "1704448800",
            "2024-03-01T10:00:00+02:00",
            "garbage",
            "2099-01-01",
            None,
        ),
        now=NOW,
    )
    assert str(out[0]) == "2024-01-05 10:00:00+00:00"
    assert str(out[1]) == "2024-01-05 10:00:00+00:00"
    assert str(out[2]) == "2024-01-05 10:00:00+00:00"
    assert str(out[3]) == "2024-03-01 08:00:00+00:00"
    assert invalid.tolist() == [False, False, False, False, True, True, False]


def test_text_cleaning_drops_control_characters_and_flags_huge_values():
    out, invalid = nz.normalise_text(values("Acme\x07  Inc", "x" * 2000))
    assert out[0] == "Acme Inc"
    assert invalid.tolist() == [False, True] and pd.isna(out[1])
