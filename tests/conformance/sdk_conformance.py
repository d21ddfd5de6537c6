#!/usr/bin/env python3
"""Conformance run of the official Python SDKs against pipewarden's CRM emulator.

Only the base URL (and the CA the emulator made for its TLS certificate) differ from what a
client of the real CRMs would configure:

* simple-salesforce (pinned 1.12.10): `Salesforce(instance_url=..., session_id=...,
  session=<requests.Session with verify=CA>, version="62.0")`.
* hubspot-api-client (pinned 12.0.0): `HubSpot(access_token=..., host=BASE[, ssl_ca_cert=CA])`.
  The client copies every keyword into each API's `Configuration` (discovery_base.py
  `_default_api_factory`: `setattr(configuration, key, value)`), and `Configuration.host`'s
  setter replaces the base path, so `host=` moves every call to the emulator.

Each check prints one `PASS name: detail` or `FAIL name: detail` line. A response the SDK
rejects (a missing required key raises ValueError in hubspot-api-client's models, an unexpected
status raises in simple-salesforce) is reported as a FAIL with the exception: it is never worked
around here. Ground truth comes from the emulator's control API under /__emulator/ (plain
`requests`, not an SDK). The script exits 1 when any check fails.

Usage:
  sdk_conformance.py --salesforce-base https://127.0.0.1:P1 --ca CA.pem --hubspot-base URL
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import traceback
from typing import Any, Callable

import requests
from urllib3.util.retry import Retry
from simple_salesforce import Salesforce

from hubspot import HubSpot
from hubspot.crm.contacts import SimplePublicObjectInput
from hubspot.crm.deals import (
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectId,
)

SF_CONSUMER_KEY = "pipewarden-demo"
SF_REFRESH_TOKEN = "emulator-demo-refresh-token"
HS_TOKEN = "pat-na1-emulator-demo-token"
SF_VERSION = "62.0"
DEFAULT_DEAL_STAGES = [
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
]
HTTP_TIMEOUT = 60


class Check(Exception):
    """A check's own failure (as opposed to an exception raised by an SDK)."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Check(message)


class Runner:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, body: Callable[[], str]) -> Any:
        try:
            detail = body()
        except Check as failure:
            self.failed += 1
            print(f"FAIL {name}: {failure}", flush=True)
        except Exception as error:  # an SDK rejected a response, or a request failed
            self.failed += 1
            where = traceback.extract_tb(error.__traceback__)[-1]
            origin = f"{where.filename.split('site-packages/')[-1]}:{where.lineno}"
            message = " ".join(str(error).split())
            if len(message) > 600:
                message = message[:600] + "..."
            print(
                f"FAIL {name}: {type(error).__name__} raised at {origin}: {message}",
                flush=True,
            )
        else:
            self.passed += 1
            print(f"PASS {name}: {detail}", flush=True)


def trusting(ca: str | None) -> requests.Session:
    """A requests session that trusts `ca` (the emulator's CA) and nothing from the environment.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override `Session.verify` whenever a call
    passes no `verify=` (psf/requests#3829), and many machines (this one, CI) set them to the
    system bundle, which does not hold the emulator's CA. `trust_env = False` keeps the CA
    given here; it also ignores proxy variables, which have no business on loopback.
    """
    session = requests.Session()
    session.trust_env = False
    if ca:
        session.verify = ca
    return session


def parse_time(text: str) -> dt.datetime:
    """Parses the emulator's ISO-8601 timestamps (`Z` or `+0000`) to an aware datetime."""
    text = text.replace("Z", "+00:00")
    if text.endswith("+0000"):
        text = text[:-5] + "+00:00"
    return dt.datetime.fromisoformat(text)


# --------------------------------------------------------------------------------------------
# Salesforce (simple-salesforce)
# --------------------------------------------------------------------------------------------


class SalesforceChecks:
    def __init__(self, base: str, ca: str, runner: Runner) -> None:
        self.base = base.rstrip("/")
        self.runner = runner
        self.http = trusting(ca)
        token = self.http.post(
            f"{self.base}/services/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": SF_CONSUMER_KEY,
                "refresh_token": SF_REFRESH_TOKEN,
            },
            timeout=HTTP_TIMEOUT,
        )
        token.raise_for_status()
        body = token.json()
        self.sf = Salesforce(
            instance_url=body["instance_url"],
            session_id=body["access_token"],
            session=trusting(ca),
            version=SF_VERSION,
        )
        self.instance_url = body["instance_url"]
        self.truth_cache: dict[str, Any] = {}

    def truth(self, object_name: str, record_id: str | None = None) -> Any:
        """Ground truth of one record, or of every record of a type (fetched once per type:
        the checks that read a whole type run before this script's own writes)."""
        if record_id is None and object_name in self.truth_cache:
            return self.truth_cache[object_name]
        path = f"/__emulator/salesforce/truth/{object_name}"
        if record_id:
            path += f"/{record_id}"
        response = self.http.get(self.base + path, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        body = response.json()
        if record_id is None:
            self.truth_cache[object_name] = body
        return body

    def run(self) -> None:
        r = self.runner
        r.run("salesforce token: instance_url is the emulator", self.check_instance_url)
        r.run("salesforce query_all Opportunity == ground truth", self.check_query_opportunity)
        r.run(
            "salesforce query_all OpportunityHistory == ground truth",
            self.check_query_history,
        )
        r.run("salesforce Opportunity.describe", self.check_describe)
        r.run("salesforce Lead.update -> 204, latest truth version", self.check_lead_update)
        r.run("salesforce composite/sobjects PATCH of 3 leads", self.check_composite)

    def check_instance_url(self) -> str:
        expect(
            self.instance_url.rstrip("/") == self.base,
            f"token response instance_url {self.instance_url!r}, expected {self.base!r}",
        )
        return f"{self.instance_url}, SDK base_url {self.sf.base_url}"

    def compare_query(self, object_name: str) -> str:
        """`query_all` (the `query` resource: live rows) and `query_all(include_deleted=True)`
        (the `queryAll` resource: recycle bin too) against the ground truth, whose records
        include the recycle bin and whose latest version says `deleted`."""
        truth = self.truth(object_name)["records"]
        truth_deleted = {record["id"]: record["versions"][-1]["deleted"] for record in truth}
        truth_live = {record_id for record_id, deleted in truth_deleted.items() if not deleted}
        problems = []

        live = [row["Id"] for row in self.sf.query_all(f"SELECT Id FROM {object_name}")["records"]]
        # simple-salesforce's query_all reports totalSize as the number of records it paged,
        # so COUNT() goes through sf.query to read the server's totalSize.
        count = self.sf.query(f"SELECT COUNT() FROM {object_name}")["totalSize"]
        if len(live) != len(set(live)):
            problems.append(f"query_all returned {len(live) - len(set(live))} duplicate ids")
        if count != len(live):
            problems.append(f"SELECT COUNT() says {count}, query_all paged {len(live)}")
        only_truth = sorted(truth_live - set(live))
        only_query = sorted(set(live) - truth_live)
        if only_truth or only_query:
            problems.append(
                f"query_all (query resource) returned {len(live)} rows, ground truth has "
                f"{len(truth_live)} not deleted; {len(only_truth)} only in truth "
                f"{only_truth[:8]}, {len(only_query)} only in query_all {only_query[:8]}"
            )

        rows = self.sf.query_all(f"SELECT Id, IsDeleted FROM {object_name}", include_deleted=True)
        every = {row["Id"]: row["IsDeleted"] for row in rows["records"]}
        if len(every) != len(rows["records"]):
            problems.append("query_all(include_deleted=True) returned duplicate ids")
        if set(every) != set(truth_deleted):
            problems.append(
                f"queryAll returned {len(every)} rows, ground truth has {len(truth_deleted)}; "
                f"only in truth {sorted(set(truth_deleted) - set(every))[:8]}, "
                f"only in queryAll {sorted(set(every) - set(truth_deleted))[:8]}"
            )
        flags = sorted(
            record_id
            for record_id, deleted in every.items()
            if record_id in truth_deleted and deleted != truth_deleted[record_id]
        )
        if flags:
            problems.append(
                f"{len(flags)} rows where queryAll's IsDeleted differs from the truth's latest "
                f"`deleted`, e.g. {[(i, every[i], truth_deleted[i]) for i in flags[:8]]} "
                "(id, IsDeleted, truth deleted)"
            )
        expect(not problems, "; ".join(problems))
        return (
            f"query_all {len(live)} live rows, query_all(include_deleted=True) {len(every)} rows "
            f"({sum(every.values())} in the recycle bin): ids and IsDeleted equal the truth"
        )

    def check_query_opportunity(self) -> str:
        return self.compare_query("Opportunity")

    def check_query_history(self) -> str:
        truth = self.truth("OpportunityHistory")["records"]
        if truth:
            return self.compare_query("OpportunityHistory") + " (compared with the truth endpoint)"
        # The truth endpoint has no rows for this type: fall back to SELECT COUNT().
        rows = self.sf.query_all("SELECT Id FROM OpportunityHistory")["records"]
        count = self.sf.query("SELECT COUNT() FROM OpportunityHistory")["totalSize"]
        expect(len(rows) == count, f"query_all returned {len(rows)}, SELECT COUNT() says {count}")
        return f"{count} rows (truth endpoint empty: compared with SELECT COUNT() only)"

    def check_describe(self) -> str:
        describe = self.sf.Opportunity.describe()
        fields = {field["name"]: field for field in describe["fields"]}
        expect("Budget__c" in fields, "describe lists no Budget__c field")
        expect("StageName" in fields, "describe lists no StageName field")
        stage = fields["StageName"]
        values = [value["value"] for value in stage.get("picklistValues") or []]
        expect(stage.get("type") == "picklist", f"StageName type {stage.get('type')!r}")
        expect(values, "StageName has no picklistValues")
        seen = {
            version["record"]["StageName"]
            for record in self.truth("Opportunity")["records"]
            for version in record["versions"]
        }
        expect(
            seen <= set(values),
            f"ground-truth stages missing from the picklist: {sorted(seen - set(values))}",
        )
        return (
            f"Budget__c ({fields['Budget__c'].get('type')}); "
            f"StageName picklist {len(values)} values: {values}"
        )

    def writable_leads(self, count: int) -> list[str]:
        found = []
        for record in self.truth("Lead")["records"]:
            latest = record["versions"][-1]
            fields = latest["record"]
            if latest["deleted"] or fields.get("IsConverted"):
                continue
            if fields.get("Status") in ("Open - Not Contacted", "Working - Contacted"):
                found.append(record["id"])
        expect(len(found) >= count, f"only {len(found)} open leads in ground truth")
        return found[:count]

    def latest_status(self, lead_id: str) -> str:
        versions = self.truth("Lead", lead_id)["versions"]
        return versions[-1]["record"].get("Status")

    def check_lead_update(self) -> str:
        lead_id = self.writable_leads(1)[0]
        before = len(self.truth("Lead", lead_id)["versions"])
        status = self.sf.Lead.update(lead_id, {"Status": "Nurture"})
        expect(status == 204, f"Lead.update returned {status!r}, expected 204")
        versions = self.truth("Lead", lead_id)["versions"]
        latest = versions[-1]["record"].get("Status")
        expect(latest == "Nurture", f"latest truth version of {lead_id} has Status {latest!r}")
        expect(len(versions) == before + 1, f"versions {before} -> {len(versions)}, expected +1")
        return f"{lead_id}: 204, truth versions {before} -> {len(versions)}, latest Status Nurture"

    def check_composite(self) -> str:
        lead_ids = self.writable_leads(4)[1:4]
        body = {
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Lead"}, "id": lead_id, "Status": "Working - Contacted"
                 if index % 2 else "Nurture"}
                for index, lead_id in enumerate(lead_ids)
            ],
        }
        result = self.sf.restful("composite/sobjects", method="PATCH", json=body)
        expect(isinstance(result, list), f"response is {type(result).__name__}, not a list")
        expect(len(result) == 3, f"{len(result)} results for 3 records")
        failures = [item for item in result if item.get("success") is not True]
        expect(not failures, f"results not successful: {failures}")
        expect(
            [item.get("id") for item in result] == lead_ids,
            f"result ids {[item.get('id') for item in result]} != request ids {lead_ids}",
        )
        for record in body["records"]:
            latest = self.latest_status(record["id"])
            expect(
                latest == record["Status"],
                f"truth for {record['id']} has Status {latest!r}, sent {record['Status']!r}",
            )
        return f"{lead_ids} all success: true, each visible as its latest truth version"


# --------------------------------------------------------------------------------------------
# HubSpot (hubspot-api-client)
# --------------------------------------------------------------------------------------------


class HubSpotChecks:
    def __init__(self, base: str, ca: str | None, runner: Runner) -> None:
        self.base = base.rstrip("/")
        self.runner = runner
        # HubSpot's burst limit (100 calls per rolling 10 s on the emulated Starter tier) is
        # met by listing every deal at 50 a page. The SDK retries a 429 only when given a
        # urllib3 Retry (its README's way); this one backs off 2, 4, 8... seconds.
        retry = Retry(
            total=8,
            backoff_factor=1,
            status_forcelist=[429],
            allowed_methods=None,  # a 429 was refused before any effect: safe for every verb
        )
        options: dict[str, Any] = {"access_token": HS_TOKEN, "host": self.base, "retry": retry}
        if self.base.startswith("https://"):
            options["ssl_ca_cert"] = ca  # Configuration.ssl_ca_cert: urllib3's ca_certs
        self.http = trusting(ca if self.base.startswith("https://") else None)
        self.client = HubSpot(**options)
        self.deals: list[Any] = []

    def truth(self, object_type: str, record_id: str) -> Any:
        response = self.http.get(
            f"{self.base}/__emulator/hubspot/records/{object_type}/{record_id}",
            timeout=HTTP_TIMEOUT,
        )
        response.raise_for_status()
        return response.json()

    def run(self) -> None:
        r = self.runner
        r.run("hubspot host= reaches the emulator", self.check_host)
        r.run("hubspot deals get_page(limit=50, dealstage history) to the end", self.check_list)
        r.run("hubspot dealstage history of 5 deals == ground truth", self.check_history)
        r.run("hubspot search dealstage EQ closedwon total", self.check_search)
        r.run("hubspot deals batch_api.read of 20 ids", self.check_batch_read)
        r.run("hubspot pipelines get_all(deals) has the 7 default stages", self.check_pipelines)
        r.run("hubspot contact basic_api.update hs_lead_status", self.check_contact_update)
        r.run("hubspot list 101 memberships add", self.check_list_add)

    def check_host(self) -> str:
        hosts = {
            self.client.crm.deals.basic_api.api_client.configuration.host,
            self.client.crm.contacts.basic_api.api_client.configuration.host,
            self.client.crm.pipelines.pipelines_api.api_client.configuration.host,
            self.client.crm.lists.memberships_api.api_client.configuration.host,
        }
        expect(hosts == {self.base}, f"configured hosts {hosts}, expected {self.base}")
        return f"Configuration.host == {self.base} for deals, contacts, pipelines, lists"

    def check_list(self) -> str:
        api = self.client.crm.deals.basic_api
        after = None
        pages = 0
        deals: list[Any] = []
        for _ in range(10_000):  # bounded: far more pages than any scale serves at 50 a page
            page = api.get_page(
                limit=50,
                after=after,
                properties=["dealstage"],
                properties_with_history=["dealstage"],
            )
            pages += 1
            expect(len(page.results) <= 50, f"page {pages} has {len(page.results)} > 50 deals")
            deals.extend(page.results)
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                break
        else:
            raise Check("paging did not end within 10,000 pages")
        ids = [deal.id for deal in deals]
        expect(ids, "no deals listed")
        expect(
            len(ids) == len(set(ids)),
            f"{len(ids) - len(set(ids))} deals listed more than once",
        )
        without_history = [
            deal.id
            for deal in deals
            if not (deal.properties_with_history or {}).get("dealstage")
        ]
        expect(not without_history, f"deals without dealstage history: {without_history[:5]}")
        self.deals = deals
        return f"{len(ids)} deals in {pages} pages, each once, each with dealstage history"

    def check_history(self) -> str:
        expect(self.deals, "no deals from the list check")
        # The five deals with the longest histories (ties by id): the most to compare.
        sample = sorted(
            self.deals,
            key=lambda deal: (-len(deal.properties_with_history["dealstage"]), int(deal.id)),
        )[:5]
        compared = 0
        for deal in sample:
            api_history = [
                (item.value, item.timestamp, item.source_type)
                for item in deal.properties_with_history["dealstage"]
            ]
            truth = self.truth("deals", deal.id)["properties"].get("dealstage") or []
            truth_history = [
                (item["value"], parse_time(item["timestamp"]), item["sourceType"])
                for item in reversed(truth)  # the truth is oldest first, the API newest first
            ]
            expect(
                api_history == truth_history,
                f"deal {deal.id}: API {api_history} != truth (newest first) {truth_history}",
            )
            expect(
                deal.properties.get("dealstage") == api_history[0][0],
                f"deal {deal.id}: dealstage {deal.properties.get('dealstage')!r} is not the "
                f"newest history value {api_history[0][0]!r}",
            )
            compared += len(api_history)
        return f"deals {[deal.id for deal in sample]}: {compared} versions equal, newest first"

    def check_search(self) -> str:
        expect(self.deals, "no deals from the list check")
        listed = sum(1 for deal in self.deals if deal.properties.get("dealstage") == "closedwon")
        request = PublicObjectSearchRequest(
            filter_groups=[
                FilterGroup(
                    filters=[Filter(property_name="dealstage", operator="EQ", value="closedwon")]
                )
            ],
            properties=["dealstage"],
            limit=100,
        )
        result = self.client.crm.deals.search_api.do_search(public_object_search_request=request)
        expect(result.total == listed, f"search total {result.total}, listed closedwon {listed}")
        stages = {deal.properties.get("dealstage") for deal in result.results}
        expect(stages <= {"closedwon"}, f"search results in stages {stages}")
        return f"total {result.total} == {listed} listed closedwon deals"

    def check_batch_read(self) -> str:
        expect(len(self.deals) >= 20, f"only {len(self.deals)} deals listed")
        ids = [deal.id for deal in self.deals[:20]]
        request = BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=deal_id) for deal_id in ids],
            properties=["dealstage"],
            properties_with_history=[],
        )
        result = self.client.crm.deals.batch_api.read(
            batch_read_input_simple_public_object_id=request
        )
        got = sorted(item.id for item in result.results)
        expect(len(result.results) == 20, f"{len(result.results)} results for 20 ids")
        expect(got == sorted(ids), f"ids {got} != requested {sorted(ids)}")
        return f"20 of 20 ids, status {result.status}"

    def check_pipelines(self) -> str:
        result = self.client.crm.pipelines.pipelines_api.get_all(object_type="deals")
        default = [pipeline for pipeline in result.results if pipeline.id == "default"]
        expect(default, f"no `default` pipeline among {[p.id for p in result.results]}")
        stages = [stage.id for stage in sorted(default[0].stages, key=lambda s: s.display_order)]
        expect(stages == DEFAULT_DEAL_STAGES, f"default stages {stages}")
        return f"{len(result.results)} pipeline(s); default stages {stages}"

    def first_contact_id(self) -> str:
        page = self.client.crm.contacts.basic_api.get_page(limit=1)
        expect(page.results, "no contacts listed")
        return page.results[0].id

    def check_contact_update(self) -> str:
        contact_id = self.first_contact_id()
        updated = self.client.crm.contacts.basic_api.update(
            contact_id,
            SimplePublicObjectInput(properties={"hs_lead_status": "UNQUALIFIED"}),
        )
        expect(
            updated.properties.get("hs_lead_status") == "UNQUALIFIED",
            f"PATCH response hs_lead_status {updated.properties.get('hs_lead_status')!r}",
        )
        versions = self.truth("contacts", contact_id)["properties"].get("hs_lead_status") or []
        expect(versions, f"ground truth of contact {contact_id} has no hs_lead_status")
        latest = versions[-1]["value"]
        expect(latest == "UNQUALIFIED", f"latest truth hs_lead_status is {latest!r}")
        return f"contact {contact_id}: latest of {len(versions)} truth version(s) UNQUALIFIED"

    def list_members(self, list_id: str) -> set[str]:
        api = self.client.crm.lists.memberships_api
        members: set[str] = set()
        after = None
        for _ in range(10_000):  # bounded
            page = api.get_page(list_id=list_id, after=after, limit=250)
            members.update(item.record_id for item in page.results)
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                return members
        raise Check(f"list {list_id} memberships did not end within 10,000 pages")

    def check_list_add(self) -> str:
        members = self.list_members("101")
        page = self.client.crm.contacts.basic_api.get_page(limit=100)
        outside = [contact.id for contact in page.results if contact.id not in members]
        expect(outside, "every contact of the first page is already in list 101")
        contact_id = outside[0]
        result = self.client.crm.lists.memberships_api.add(list_id="101", request_body=[contact_id])
        expect(
            contact_id in (result.records_ids_added or []),
            f"records_ids_added {result.records_ids_added}, record_ids_missing "
            f"{result.record_ids_missing}, expected {contact_id} added",
        )
        after = self.list_members("101")
        expect(contact_id in after, f"{contact_id} not among the list's members after the add")
        return (
            f"records_ids_added {result.records_ids_added}; members {len(members)} -> {len(after)}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--salesforce-base", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--ca", required=True, help="the emulator's CA certificate (PEM)")
    parser.add_argument("--hubspot-base", required=True, help="http(s)://127.0.0.1:PORT")
    args = parser.parse_args()

    runner = Runner()
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("salesforce", lambda: SalesforceChecks(args.salesforce_base, args.ca, runner).run()),
        ("hubspot", lambda: HubSpotChecks(args.hubspot_base, args.ca, runner).run()),
    ]
    for name, section in sections:
        try:
            section()
        except Exception as error:  # setting up a side failed: every check of it is lost
            runner.failed += 1
            print(f"FAIL {name} setup: {type(error).__name__}: {error}", flush=True)
    print(f"conformance: {runner.passed} passed, {runner.failed} failed")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
