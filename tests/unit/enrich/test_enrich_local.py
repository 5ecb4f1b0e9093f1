"""Local enrichment: pure derivations, and what a provider's answer is allowed to be."""

import pandas as pd
import pytest

from leadflow.enrich import firmographics, matching
from leadflow.enrich import hop as enrich
from leadflow.enrich.firmographics import parse_company

pytestmark = pytest.mark.unit  # no database, no Prefect server

FIELDS = {
    "industry": "industry",
    "employees": "employees",
    "revenue": "revenue",
    "country": "country",
}


def test_email_types_and_company_domain():
    lists = enrich.load_lists()
    emails = pd.Series(
        [
            "ann@acme.com",
            "bob@gmail.com",
            "x@mailinator.com",
            "info@acme.com",
            "sales2@beta.io",
            "c@mail.acme.co.uk",
            None,
        ],
        dtype="str",
    )
    kind, host = enrich.email_types(emails, lists)
    assert kind.tolist() == ["business", "free", "disposable", "role", "role", "business", None]
    websites = pd.Series([None, "gamma.com", None, None, None, None, "delta.org"], dtype=object)
    domain = enrich.company_domain(host, kind, websites)
    assert domain.tolist() == [
        "acme.com",
        "gamma.com",
        None,
        "acme.com",
        "beta.io",
        "acme.co.uk",
        "delta.org",
    ]


@pytest.mark.parametrize(
    ("title", "seniority", "department"),
    [
        ("CEO", "C-level", "executive"),
        ("Founder & CEO", "C-level", "executive"),
        ("CTO", "C-level", "engineering"),
        ("Chief Revenue Officer", "C-level", "sales"),
        ("VP Eng", "VP", "engineering"),
        ("vp of sales", "VP", "sales"),
        ("SVP, Operations", "VP", "operations"),
        ("Sr. Director, Finance", "Director", "finance"),
        ("Head of IT", "Director", "it"),
        ("Sr. Mgr, Sales Ops", "Manager", "sales"),
        ("SOFTWARE ENGINEER", "Individual contributor", "engineering"),
        ("Account Executive", "Individual contributor", "sales"),
        ("HR Generalist", "Individual contributor", "hr"),
        ("MBA Candidate", "Student", "other"),
        ("Product Owner", "Individual contributor", "engineering"),
        ("Astronaut", "Unknown", "other"),
    ],
)
def test_titles_to_seniority_and_department(title, seniority, department):
    assert enrich.classify_title(title) == (seniority, department)


def test_missing_titles_are_unknown_without_department():
    seniority, department = enrich.titles(pd.Series(["CEO", None], dtype=object))
    assert seniority.tolist() == ["C-level", "Unknown"] and department.tolist()[0] == "executive"
    assert department.isna().tolist() == [False, True]


def test_country_to_region_and_main_time_zone():
    region, zone = enrich.places(
        pd.Series(["US", "BR", "AE", "AU", "DE", "ZA", None], dtype=object)
    )
    assert region.tolist() == ["NA", "LATAM", "EMEA", "APAC", "EMEA", "EMEA", None]
    assert zone.tolist()[:4] == [
        "America/New_York",
        "America/Sao_Paulo",
        "Asia/Dubai",
        "Australia/Sydney",
    ]


def test_company_names_cleaned_for_matching():
    cleaned = enrich.clean_company(
        pd.Series(
            [
                "ACME, Inc.",
                "Acme Holdings LLC",
                "Müller GmbH & Co. KG",
                "Black & Decker Inc",
                "Inc",
                None,
            ]
        ),
        enrich.load_lists().legal_suffixes,
    )
    assert cleaned.tolist()[:4] == ["acme", "acme", "müller", "black and decker"]
    assert cleaned[4:].isna().all()


def test_leads_with_nothing_to_derive_pass_through_empty():
    leads = pd.DataFrame(
        {
            "email": [None],
            "title": [None],
            "phone": [None],
            "country": [None],
            "company": [None],
            "website": [None],
        },
        dtype=object,
    )
    out = enrich.derive(leads)
    assert out.iloc[0].isna().drop(["seniority"]).all() and out.iloc[0]["seniority"] == "Unknown"


def test_provider_garbage_leaves_fields_empty_with_reasons():
    company = parse_company(
        {"industry": "Software", "employees": "many", "revenue": -5, "country": "Narnia"}, FIELDS
    )
    assert company.status == "found" and company.industry == "Software"
    assert (company.employees, company.revenue, company.country) == (None, None, None)
    assert company.notes == {
        "employees": "'many' is text, not a number",
        "revenue": "-5 is negative",
        "country": "'Narnia' is not a country",
    }
    assert parse_company({"employees": "1200"}, FIELDS).notes == {
        "employees": "'1200' is text, not a number"
    }
    assert parse_company({"employees": "1,200"}, FIELDS, text_numbers=True).employees == 1200
    assert parse_company(["not", "a", "dict"], FIELDS).status == "invalid"
    assert parse_company({"employees": 12.5, "revenue": True}, FIELDS).notes == {
        "employees": "12.5 is not a whole number",
        "revenue": "True is not a number",
    }


def test_account_matching_by_domain_alias_then_name():
    accounts = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["Acme Inc", "Globex Corporation", "Initech"],
            "domain": ["acme.com", "globex.com", None],
            "aliases": [None, ["globex-group.com"], None],
            "owner_rep_id": [10, 20, None],
        }
    )
    index = matching.build_index(accounts, enrich.load_lists().legal_suffixes)
    domains = pd.Series(["acme.com", "globex-group.com", None, None, "other.com"], dtype=object)
    companies = pd.Series([None, None, "initech", "globex", "unrelated name"], dtype=object)
    out = matching.match_accounts(domains, companies, index, threshold=0.9)
    assert out["account_id"].tolist()[:4] == [1, 2, 3, 2]
    assert out["account_match"].tolist()[:4] == ["domain", "alias", "name~1.00", "name~1.00"]
    assert out["account_owner_rep_id"].tolist()[:2] == [10, 20]
    assert pd.isna(out["account_id"][4])
    loose = matching.match_accounts(pd.Series([None]), pd.Series(["initec"]), index, threshold=0.8)
    assert loose["account_match"][0].startswith("name~0.9")


def test_file_provider_reads_a_dump(tmp_path):
    from blocks.firmographics import FileFirmographics

    path = tmp_path / "firmo.csv"
    path.write_text(
        "domain,industry,employees,revenue,country\nacme.com,Software,120,1000000,US\nbad.com,Retail,-3,x,ZZ\n"
    )
    provider = firmographics.FileProvider(FileFirmographics(path=str(path)))
    stats = firmographics.LookupStats()
    out = provider.lookup(["acme.com", "bad.com", "nope.com"], stats)
    assert (out["acme.com"].employees, out["acme.com"].country) == (120, "US")
    assert out["bad.com"].notes == {
        "employees": "-3.0 is negative",
        "revenue": "'x' is not a number",
        "country": "'ZZ' is not a country",
    }
    assert out["nope.com"].status == "not_found"
