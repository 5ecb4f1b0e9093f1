"""The fast phone path must agree with phonenumbers itself."""

import random

import pandas as pd
import phonenumbers
import pytest

from leadflow.capture import phones

pytestmark = pytest.mark.unit  # no database, no Prefect server

REGIONS = [
    "US",
    "CA",
    "GB",
    "DE",
    "FR",
    "IN",
    "AU",
    "NL",
    "ES",
    "BR",
    "JP",
    "SG",
    "SE",
    "CH",
    "IE",
    "IT",
    "MX",
    "AR",
    "CN",
    "KR",
    "RU",
    "PL",
    "BE",
    "AT",
    "DK",
    "NO",
    "FI",
    "PT",
    "NZ",
    "ZA",
    "IL",
    "AE",
]


def reference(raw, region):
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    # Possible as a whole number: a local-only number (US 555-0199) has no E.164 form.
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def samples(count=6000, seed=5):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        region = rng.choice([*REGIONS, None])
        cc = str(phonenumbers.country_code_for_region(region or rng.choice(REGIONS)))
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 13)))
        shape = rng.randint(0, 6)
        if shape == 0:
            raw = f"+{cc} {body}"
        elif shape == 1:
            raw = f"0{body}"
        elif shape == 2:
            raw = f"({body[:3]}) {body[3:6]}-{body[6:]}"
        elif shape == 3:
            raw = f"+{cc} (0) {body}"
        elif shape == 4:
            raw = f"00{cc} {body}"
        elif shape == 5:
            raw = f"{cc}{body}"
        else:
            raw = f"+{cc}-{body[:2]}.{body[2:]}"
        out.append((raw, region))
    # Real-looking numbers of every region, national and international.
    for region in REGIONS:
        example = phonenumbers.example_number(region)
        for fmt in (
            phonenumbers.PhoneNumberFormat.NATIONAL,
            phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        ):
            out.append((phonenumbers.format_number(example, fmt), region))
        mobile = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if mobile:
            out.append(
                (
                    phonenumbers.format_number(mobile, phonenumbers.PhoneNumberFormat.NATIONAL),
                    region,
                )
            )
    out += [
        ("call me", "US"),
        ("12", "US"),
        ("+", None),
        ("+0 123 456", None),
        ("  +44 20 7946 0018 ", "GB"),
    ]
    return out


def test_fast_path_agrees_with_phonenumbers():
    cases = samples()
    disagreements = [
        (raw, region, phones.e164(raw, region), reference(raw, region))
        for raw, region in cases
        if phones.e164(raw, region) != reference(raw, region)
    ]
    assert disagreements == []
    # The batch path (vectorised shape checks) agrees too.
    batch = phones.to_e164(
        pd.Series([r for r, _ in cases]), pd.Series([g for _, g in cases], dtype=object)
    )
    assert batch.tolist() == [reference(raw, region) for raw, region in cases]
    fast = sum(
        1
        for raw, region in cases
        if phones._PLAIN.match(raw)
        and "(0)" not in raw
        and phones._lean_e164(phones._NOT_DIGIT.sub("", raw), raw.lstrip().startswith("+"), region)
        is not phones.SLOW
    )
    assert fast / len(cases) > 0.5  # most numbers take the fast path


@pytest.mark.parametrize("seed", [1, 2])
def test_validity_and_region_agree_with_phonenumbers(seed):
    rng = random.Random(seed)
    numbers = []
    for region in REGIONS:
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example:
                digits = str(example.national_number)
                for _ in range(30):
                    mutated = "".join(
                        c if rng.random() > 0.3 else rng.choice("0123456789") for c in digits
                    )
                    numbers.append(f"+{example.country_code}{mutated}")
    numbers += [
        "+12125550123",
        "+14165550123",
        "+447911123456",
        "+441481123456",
        "+79123456789",
        "+77012345678",
    ]
    # Validity is asked of canonical E.164 (what capture stores), so canonicalise first.
    numbers = sorted({e for e in (reference(n, None) for n in numbers) if e})
    assert len(numbers) > 500
    valid, region = phones.validity(pd.Series(numbers))
    for number, is_valid, code in zip(numbers, valid, region, strict=True):
        parsed = phonenumbers.parse(number, None)
        assert is_valid == phonenumbers.is_valid_number(parsed), number
        if is_valid:
            assert code == phonenumbers.region_code_for_number(parsed), number
