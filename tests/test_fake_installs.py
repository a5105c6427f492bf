"""The Install API fake (cli/fake_installs.py) answers what stripe-python 16 expects: list with
the `app` filter and cursor pagination, retrieve, uninstall, modes by key; the rest forwarded."""

from __future__ import annotations

import pytest
import stripe

from cli.fake_installs import FakeInstalls

APP = "com.example.testapp"


def client(fake: FakeInstalls, key: str = "sk_test_fake", account: str | None = None):
    return stripe.StripeClient(key, base_addresses={"api": fake.url}, stripe_account=account,
                               http_client=stripe.HTTPXClient())


@pytest.mark.gen_test(timeout=30)
async def test_list_paginates_filters_by_app_and_mode():
    fake = FakeInstalls()
    try:
        for i in range(25):
            fake.add(f"acct_{i:03d}", APP, livemode=False, created=1_700_000_000 + i)
        fake.add("acct_other", "com.example.other", livemode=False)
        fake.add("acct_live", APP, livemode=True, permissions_granted=["balance_read"])
        sc = client(fake)
        page = await sc.v1.apps.installs.list_async({"app": APP, "limit": 10})
        assert page.object == "list" and page.has_more is True and len(page.data) == 10
        first = page.data[0]
        assert isinstance(first, stripe.apps.Install)
        assert first.object == "apps.install" and first.id.startswith("apinst_")
        assert first.account == "acct_024" and first.livemode is False  # newest first
        assert first.status == "installed" and first.approval_required is False
        assert first.permissions_granted == [] and first.permissions_pending == []
        seen = [i.account async for i in page.auto_paging_iter()]
        assert seen == [f"acct_{i:03d}" for i in range(24, -1, -1)]
        assert fake.state.list_pages == 3  # the first page, then 2 more by auto-pagination
        live = await client(fake, "sk_live_fake").v1.apps.installs.list_async({"app": APP})
        assert [(i.account, i.permissions_granted) for i in live.data] == [
            ("acct_live", ["balance_read"])]
        with pytest.raises(stripe.AuthenticationError):
            await client(fake, "sk_bogus").v1.apps.installs.list_async({"app": APP})
        with pytest.raises(stripe.InvalidRequestError):
            await sc.v1.apps.installs.list_async({"limit": 101})
        # acting on one account (Stripe-Account) lists only that account's installs
        one = await client(fake, account="acct_003").v1.apps.installs.list_async({"app": APP})
        assert [i.account for i in one.data] == ["acct_003"]
    finally:
        await fake.close()


@pytest.mark.gen_test(timeout=30)
async def test_retrieve_uninstall_and_the_rest_is_404_without_upstream():
    fake = FakeInstalls()
    try:
        obj = fake.add("acct_1", APP, livemode=False)
        sc = client(fake)
        got = await sc.v1.apps.installs.retrieve_async(obj["id"])
        assert got.account == "acct_1"
        with pytest.raises(stripe.InvalidRequestError):  # another mode's key cannot see it
            await client(fake, "sk_live_x").v1.apps.installs.retrieve_async(obj["id"])
        gone = await sc.v1.apps.installs.uninstall_async(obj["id"])
        assert gone.id == obj["id"] and gone.status == "uninstalling"
        assert (await sc.v1.apps.installs.list_async({"app": APP})).data == []
        with pytest.raises(stripe.InvalidRequestError):
            await sc.v1.apps.installs.retrieve_async(obj["id"])
        with pytest.raises(stripe.InvalidRequestError):
            await sc.v1.balance.retrieve_async()
        # the resource class takes the same path
        made = await client(fake, account="acct_2").v1.apps.installs.create_async({"app": APP})
        assert made.account == "acct_2"
        fake.fail_list_after(0, status=400)
        with pytest.raises(stripe.InvalidRequestError):
            await sc.v1.apps.installs.list_async({"app": APP})
    finally:
        await fake.close()


@pytest.mark.gen_test(timeout=30)
async def test_other_requests_are_forwarded_to_localstripe(localstripe):
    fake = FakeInstalls(upstream=localstripe)
    try:
        balance = await client(fake).v1.balance.retrieve_async()
        assert balance.available.amount == 2000  # localstripe's balance
    finally:
        await fake.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_state_file_keeps_the_installs_across_restarts(tmp_path):
    import json
    import os
    import stat

    path = str(tmp_path / "installs.json")
    fake = FakeInstalls(state_file=path)
    try:
        made = fake.add("acct_1", APP, livemode=False)
        gone = fake.add("acct_2", APP, livemode=True)
        await client(fake, "sk_live_fake").v1.apps.installs.uninstall_async(gone["id"])
    finally:
        await fake.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [o["id"] for o in json.loads(open(path).read())["installs"]] == [made["id"]]
    again = FakeInstalls(state_file=path)
    try:
        got = await client(again).v1.apps.installs.retrieve_async(made["id"])
        assert got.account == "acct_1" and got.status == "installed"
        page = await client(again, "sk_live_fake").v1.apps.installs.list_async({"app": APP})
        assert page.data == []
    finally:
        await again.close()


SANDBOX_KEY = "sk_test_fakesandbox"


@pytest.mark.gen_test(timeout=30)
async def test_a_sandbox_key_sees_the_sandbox_installs_only(tmp_path):
    """Issue 26: the managed sandbox's key (a `sk_test_` key like the test one) lists, makes and
    uninstalls the sandbox's installs, which the test key never sees, and the reverse; the state
    file keeps which installs are the sandbox's."""
    path = str(tmp_path / "installs.json")
    fake = FakeInstalls(state_file=path, sandbox_keys=(SANDBOX_KEY,))
    try:
        fake.add("acct_test", APP, livemode=False)
        boxed = fake.add("acct_box", APP, sandbox=True)
        assert boxed["livemode"] is False  # as Stripe's sandbox objects say
        sandbox = client(fake, SANDBOX_KEY)
        page = await sandbox.v1.apps.installs.list_async({"app": APP})
        assert [i.account for i in page.data] == ["acct_box"]
        page = await client(fake).v1.apps.installs.list_async({"app": APP})
        assert [i.account for i in page.data] == ["acct_test"]
        with pytest.raises(stripe.InvalidRequestError):  # another mode's install is missing
            await client(fake).v1.apps.installs.retrieve_async(boxed["id"])
        # an install made with the sandbox key is the sandbox's
        made = await client(fake, SANDBOX_KEY, "acct_new").v1.apps.installs.create_async(
            {"app": APP})
        assert made.livemode is False and made.account == "acct_new"
        page = await sandbox.v1.apps.installs.list_async({"app": APP})
        assert sorted(i.account for i in page.data) == ["acct_box", "acct_new"]
    finally:
        await fake.close()
    again = FakeInstalls(state_file=path, sandbox_keys=(SANDBOX_KEY,))
    try:
        page = await client(again, SANDBOX_KEY).v1.apps.installs.list_async({"app": APP})
        assert sorted(i.account for i in page.data) == ["acct_box", "acct_new"]
        await client(again, SANDBOX_KEY).v1.apps.installs.uninstall_async(boxed["id"])
        again.remove("acct_new", sandbox=True)
        assert (await client(again, SANDBOX_KEY).v1.apps.installs.list_async({"app": APP})
                ).data == []
        page = await client(again).v1.apps.installs.list_async({"app": APP})
        assert [i.account for i in page.data] == ["acct_test"]  # the test install stays
    finally:
        await again.close()
