//! Quota-increase requests end to end through the server functions: ask, approve (the next call
//! is admitted), deny with a note, cancel, concurrent decisions, refusals and bad input.

mod common;

use common::TestApp;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::Value;
use services::accounts::Role;

struct Setup {
    app: TestApp,
    merchant: reqwest::Client,
    admin: reqwest::Client,
    key_id: String,
    secret: String,
}

/// A merchant with one key (hourly limit 2) and an admin, both signed in.
async fn setup() -> Setup {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let merchant = app.signed_in("ann@example.com").await;
    let admin = app.signed_in("root@example.com").await;
    let created: Value = app.rpc(&merchant, "keys/create", &[("name", "Checkout")]).await.json().await.unwrap();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = services::keys::ApiKeyId::parse(&key_id).unwrap();
    app.set_quota(id, 2, 10_000).await;
    Setup { app, merchant, admin, key_id, secret }
}

async fn ask(s: &Setup, per_hour: &str, per_day: &str, reason: &str) -> reqwest::Response {
    s.app
        .rpc(
            &s.merchant,
            "quota-requests/create",
            &[("key_id", &s.key_id), ("per_hour", per_hour), ("per_day", per_day), ("reason", reason)],
        )
        .await
}

async fn ping(s: &Setup) -> StatusCode {
    s.app.call("/api/v1/ping", &s.secret).await.status()
}

/// A page of the audit trail: its entries, and where the next page starts.
async fn audit_trail(s: &Setup, args: &[(&str, &str)]) -> (Vec<Value>, Option<String>) {
    let page: Value = s.app.rpc(&s.admin, "admin/quota-changes", args).await.json().await.unwrap();
    let entries = page["entries"].as_array().unwrap_or_else(|| panic!("{page}")).clone();
    (entries, page["older"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_admits_the_next_call_and_tells_the_merchant() {
    let s = setup().await;
    assert_eq!(ping(&s).await, StatusCode::OK);
    assert_eq!(ping(&s).await, StatusCode::OK);
    assert_eq!(ping(&s).await, StatusCode::TOO_MANY_REQUESTS);

    let res = ask(&s, "100", "", "Black Friday traffic").await;
    assert_eq!(res.status(), StatusCode::OK);
    let request: Value = res.json().await.unwrap();
    assert_eq!(request["status"], "pending");
    assert_eq!(request["requested_per_hour"], 100);
    assert_eq!(request["requested_per_day"], 10_000);
    // One open request per key.
    assert_eq!(ask(&s, "200", "", "more").await.status(), StatusCode::CONFLICT);
    // Admins are emailed what is asked for, on which key, against what it has now.
    let emailed = "SELECT count(*) FROM outbound_emails WHERE to_address = 'root@example.com' \
                   AND text_body LIKE '%asks for 100 requests per hour and 10,000 per day on the key “Checkout” (km_live_%, now 2 requests per hour and 10,000 per day): Black Friday traffic%'";
    assert_eq!(s.app.count(emailed).await, 1);
    // Its link opens the request's own card on the admins' list.
    let card = format!("#request-{}", request["id"]);
    let linked = format!(
        "SELECT count(*) FROM outbound_emails WHERE to_address = 'root@example.com' \
         AND text_body LIKE '%Decide: %/admin/quota-requests{card}' || chr(10) || '%'"
    );
    assert_eq!(s.app.count(&linked).await, 1);

    // The admin sees the key's recent use next to the request.
    s.app.wait_for_events(services::keys::ApiKeyId::parse(&s.key_id).unwrap(), 3).await;
    let listed: Vec<Value> = s.app.rpc(&s.admin, "admin/quota-requests", &[]).await.json().await.unwrap();
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["owner_email"], "ann@example.com");
    assert_eq!(listed[0]["requests_last_24h"], 2);

    let id = request["id"].to_string();
    let approved = s
        .app
        .rpc(
            &s.admin,
            "admin/quota-requests/approve",
            &[("id", &id), ("per_hour", "50"), ("per_day", "10000"), ("note", "halved")],
        )
        .await;
    assert_eq!(approved.status(), StatusCode::OK);
    let approved: Value = approved.json().await.unwrap();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["approved_per_hour"], 50);
    assert_eq!(ping(&s).await, StatusCode::OK, "the call refused before is admitted now");

    // The merchant sees the decision, in the bell and by email; the audit trail has it.
    let mine: Vec<Value> =
        s.app.rpc(&s.merchant, "quota-requests/for-key", &[("key_id", &s.key_id)]).await.json().await.unwrap();
    assert_eq!(mine[0]["decision_note"], "halved");
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    // Which key, what was asked and what was granted.
    let raised = bell.iter().find(|n| n["title"] == "Quota raised for “Checkout”").expect("told");
    assert_eq!(
        raised["body"],
        "Your request for “Checkout” was approved with other limits: you asked for 100 requests per hour and \
         10,000 per day; the key now allows 50 requests per hour and 10,000 per day. Note from the admin: halved"
    );
    assert_eq!(
        s.app.count("SELECT count(*) FROM outbound_emails WHERE to_address = 'ann@example.com' AND subject LIKE 'Quota raised%'").await,
        1
    );
    let audit = audit_trail(&s, &[]).await.0;
    let entry = audit.iter().find(|e| e["source"] == "request").unwrap();
    assert_eq!(entry["decision"], "approved");
    assert_eq!((entry["old_per_hour"].as_i64(), entry["new_per_hour"].as_i64()), (Some(2), Some(50)));
    assert_eq!(entry["changed_by"], "root@example.com");
    assert_eq!(entry["reason"], "halved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_keeps_the_quota_and_carries_the_note() {
    let s = setup().await;
    let request: Value = ask(&s, "", "20000", "growth").await.json().await.unwrap();
    let id = request["id"].to_string();
    // A direct change first, so that the audit trail shows both kinds of decision in order.
    assert_eq!(admin_set(&s, "5", "15000", "ticket 9").await.status(), StatusCode::OK);
    let no_note = s.app.rpc(&s.admin, "admin/quota-requests/deny", &[("id", &id), ("note", " ")]).await;
    assert_eq!(no_note.status(), StatusCode::BAD_REQUEST);
    // Percent-encoded bytes that are not text would be stored as "��" and mailed to the merchant.
    let garbled = s
        .admin
        .post(s.app.url("/rpc/admin/quota-requests/deny"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={id}&note=%FF%FE"))
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);
    assert!(message(garbled).await.contains("not text"));
    let control = s.app.rpc(&s.admin, "admin/quota-requests/deny", &[("id", &id), ("note", "a\u{1}b")]).await;
    assert_eq!(control.status(), StatusCode::BAD_REQUEST);
    assert!(message(control).await.contains("control characters"));
    let denied: Value = s
        .app
        .rpc(&s.admin, "admin/quota-requests/deny", &[("id", &id), ("note", "Upgrade your plan first")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["decision_note"], "Upgrade your plan first");
    // The merchant hears what was asked and what the key keeps (the admin's later set).
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    let told = bell.iter().find(|n| n["title"] == "Quota request for “Checkout” denied").expect("told");
    assert_eq!(
        told["body"],
        "Your request for 2 requests per hour and 20,000 per day on “Checkout” was denied; the key keeps \
         5 requests per hour and 15,000 per day. Note from the admin: Upgrade your plan first\n\nYou can send a new \
         request from the key's page, explaining the need in more detail."
    );
    let keys = s.app.key_list(&s.merchant).await;
    assert_eq!(keys[0]["requests_per_day"], 15_000);
    assert_eq!(s.app.count("SELECT count(*) FROM quota_changes WHERE source = 'request'").await, 0);
    // The audit trail keeps the denial too, newest first, with who, what was asked and the note.
    let audit = audit_trail(&s, &[]).await.0;
    let decisions: Vec<&str> = audit.iter().map(|e| e["decision"].as_str().unwrap_or_default()).collect();
    assert_eq!(decisions, ["denied", "set", "set"], "{audit:?}");
    let denial = &audit[0];
    assert_eq!(denial["reason"], "Upgrade your plan first");
    assert_eq!(denial["changed_by"], "root@example.com");
    assert_eq!(denial["source"], "request");
    assert_eq!(denial["quota_request_id"].to_string(), id);
    assert_eq!((denial["old_per_day"].as_i64(), denial["new_per_day"].as_i64()), (Some(10_000), Some(20_000)));
    assert_eq!(audit[1]["reason"], "ticket 9");
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    assert!(bell[0]["body"].as_str().unwrap().contains("Upgrade your plan first"));
    // Decided is final.
    let again = s
        .app
        .rpc(
            &s.admin,
            "admin/quota-requests/approve",
            &[("id", &id), ("per_hour", "5"), ("per_day", "20000"), ("note", "")],
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_can_be_cancelled_once() {
    let s = setup().await;
    let request: Value = ask(&s, "10", "", "test").await.json().await.unwrap();
    let id = request["id"].to_string();
    let cancelled: Value = s.app.rpc(&s.merchant, "quota-requests/cancel", &[("id", &id)]).await.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(s.app.rpc(&s.merchant, "quota-requests/cancel", &[("id", &id)]).await.status(), StatusCode::CONFLICT);
    // The admins' list says who withdrew it.
    let page = s.app.page(&s.admin, "/admin/quota-requests").await.text().await.unwrap();
    assert!(page.contains("UTC by the merchant</dd>"), "{page}");
    let approve = s
        .app
        .rpc(
            &s.admin,
            "admin/quota-requests/approve",
            &[("id", &id), ("per_hour", "10"), ("per_day", "10000"), ("note", "")],
        )
        .await;
    assert_eq!(approve.status(), StatusCode::CONFLICT);
    // A new request can be made after cancelling.
    let again: Value = ask(&s, "10", "", "again").await.json().await.unwrap();
    let form = [
        ("id", again["id"].to_string()),
        ("per_hour", "10".into()),
        ("per_day", "10000".into()),
        ("note", String::new()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(s.app.rpc(&s.admin, "admin/quota-requests/approve", &form).await.status(), StatusCode::OK);
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    assert_eq!(
        bell[0]["body"],
        "Your request for “Checkout” was approved: the key now allows 10 requests per hour and 10,000 per day, \
         as you asked."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_approvals_exactly_one_wins() {
    let s = setup().await;
    let second_admin = {
        s.app.user("root2@example.com", Role::Admin).await;
        s.app.signed_in("root2@example.com").await
    };
    let request: Value = ask(&s, "40", "", "race").await.json().await.unwrap();
    let id = request["id"].to_string();
    let approve = |c: reqwest::Client, per_hour: &'static str| {
        let (url, id) = (s.app.url("/rpc/admin/quota-requests/approve"), id.clone());
        async move {
            c.post(url)
                .form(&[("id", id.as_str()), ("per_hour", per_hour), ("per_day", "10000"), ("note", "")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (a, b) = tokio::join!(approve(s.admin.clone(), "40"), approve(second_admin.clone(), "30"));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    assert_eq!(s.app.count("SELECT count(*) FROM quota_changes WHERE source = 'request'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_cannot_decide_or_touch_other_owners_keys() {
    let s = setup().await;
    let request: Value = ask(&s, "10", "", "x").await.json().await.unwrap();
    let id = request["id"].to_string();
    for (path, args) in [
        ("admin/quota-requests", vec![]),
        (
            "admin/quota-requests/approve",
            vec![("id", id.as_str()), ("per_hour", "10"), ("per_day", "10"), ("note", "")],
        ),
        ("admin/quota-requests/deny", vec![("id", id.as_str()), ("note", "no")]),
        (
            "admin/quota/set",
            vec![("key_id", s.key_id.as_str()), ("per_hour", "9"), ("per_day", "9"), ("burst", ""), ("reason", "x")],
        ),
        ("admin/quota-changes", vec![]),
        ("admin/mail", vec![]),
        ("admin/keys/search", vec![]),
    ] {
        assert_eq!(s.app.rpc(&s.merchant, path, &args).await.status(), StatusCode::FORBIDDEN, "{path}");
    }
    s.app.user("mallory@example.com", Role::Merchant).await;
    let mallory = s.app.signed_in("mallory@example.com").await;
    let theirs = s
        .app
        .rpc(
            &mallory,
            "quota-requests/create",
            &[("key_id", &s.key_id), ("per_hour", "99"), ("per_day", ""), ("reason", "mine now")],
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.app.rpc(&mallory, "quota-requests/cancel", &[("id", &id)]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.app.rpc(&mallory, "quota-requests/for-key", &[("key_id", &s.key_id)]).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_numbers_get_a_4xx_and_change_nothing() {
    let s = setup().await;
    // Each error names the form field to correct (the form marks it for screen readers).
    for (per_hour, per_day, reason, field) in [
        ("", "", "nothing asked", "per_hour"),
        ("1", "", "lower than now", "per_hour"),
        ("2", "", "equal to now", "per_hour"),
        ("-100", "", "negative", "per_hour"),
        ("1.5", "", "fraction", "per_hour"),
        ("lots", "", "words", "per_hour"),
        ("99999999999999999999", "", "overflow", "per_hour"),
        ("5000000", "", "above the platform maximum", "per_hour"),
        ("", "ten", "words", "per_day"),
        ("100", "", "", "reason"),
    ] {
        let res = ask(&s, per_hour, per_day, reason).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{per_hour:?} {per_day:?} {reason:?}");
        let body: Value = res.json().await.unwrap();
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(body["error"]["field"], field, "{per_hour:?} {per_day:?} {reason:?}: {body}");
    }
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests").await, 0);
    let bad_id = s.app.rpc(&s.merchant, "quota-requests/cancel", &[("id", "abc")]).await;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
    let set = admin_set(&s, "0", "10", "x").await;
    assert_eq!(set.status(), StatusCode::BAD_REQUEST);
    assert_eq!(set.json::<Value>().await.unwrap()["error"]["field"], "per_hour");
    let no_reason = admin_set(&s, "7", "70", " ").await;
    assert_eq!(no_reason.json::<Value>().await.unwrap()["error"]["field"], "reason");
    let ok = admin_set(&s, "7", "70", "support ticket 42").await;
    assert_eq!(ok.status(), StatusCode::OK);
    let audit = audit_trail(&s, &[]).await.0;
    assert_eq!(audit[0]["source"], "admin");
    assert_eq!(audit[0]["decision"], "set");
    assert_eq!(audit[0]["reason"], "support ticket 42");
    // The same limits again: nothing to change, nothing recorded, nobody told.
    let told = s.app.count("SELECT count(*) FROM notifications").await;
    let again = admin_set(&s, "7", "70", "again").await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    // About both limits together, so about no one field.
    let body: Value = again.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("nothing to change"), "{body}");
    assert!(body["error"].get("field").is_none(), "{body}");
    assert_eq!(audit_trail(&s, &[]).await.0.len(), audit.len());
    assert_eq!(s.app.count("SELECT count(*) FROM notifications").await, told);

    // The form is on the key's page, for admins only, filled with the key's limits.
    let path = format!("/dashboard/developers/api-keys/{}", s.key_id);
    let admins = s.app.page(&s.admin, &path).await.text().await.unwrap();
    assert!(admins.contains(r#"data-testid="set-quota""#), "{admins}");
    assert!(admins.contains(r#"name="per_hour" inputmode="numeric" value="7""#), "{admins}");
    let merchants = s.app.page(&s.merchant, &path).await.text().await.unwrap();
    assert!(merchants.contains(r#"data-testid="key-title""#) && !merchants.contains("set-quota"), "{merchants}");
}

async fn approve(s: &Setup, id: &str, per_hour: &str, per_day: &str) -> reqwest::Response {
    s.app
        .rpc(
            &s.admin,
            "admin/quota-requests/approve",
            &[("id", id), ("per_hour", per_hour), ("per_day", per_day), ("note", "")],
        )
        .await
}

/// The admin sets the key's quota directly.
async fn admin_set(s: &Setup, per_hour: &str, per_day: &str, reason: &str) -> reqwest::Response {
    let args = [
        ("key_id", s.key_id.as_str()),
        ("per_hour", per_hour),
        ("per_day", per_day),
        ("burst", ""),
        ("reason", reason),
    ];
    s.app.rpc(&s.admin, "admin/quota/set", &args).await
}

async fn message(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

async fn key_limits(s: &Setup) -> (i64, i64) {
    let keys = s.app.key_list(&s.merchant).await;
    (keys[0]["requests_per_hour"].as_i64().unwrap(), keys[0]["requests_per_day"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admins_top_bar_counts_the_requests_waiting_for_a_decision() {
    let s = setup().await;
    let counts = |who: &reqwest::Client| {
        let (who, app) = (who.clone(), &s.app);
        async move { app.rpc(&who, "nav/counts", &[]).await.json::<Value>().await.unwrap() }
    };
    assert_eq!(counts(&s.admin).await["waiting_requests"], 0);
    let request: Value = ask(&s, "100", "", "launch").await.json().await.unwrap();
    assert_eq!(counts(&s.admin).await["waiting_requests"], 1);
    // Merchants decide nothing: no count for them.
    assert_eq!(counts(&s.merchant).await["waiting_requests"], Value::Null);
    assert_eq!(approve(&s, &request["id"].to_string(), "100", "10000").await.status(), StatusCode::OK);
    assert_eq!(counts(&s.admin).await["waiting_requests"], 0);
    // The merchant's bell counts the decision.
    assert_eq!(counts(&s.merchant).await["unread"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_below_the_live_quota_is_refused_and_the_request_stays_pending() {
    let s = setup().await;
    let request: Value = ask(&s, "100", "", "launch").await.json().await.unwrap();
    let id = request["id"].to_string();

    // Approving less than the key has now would lower its quota.
    let lower = approve(&s, &id, "1", "10000").await;
    assert_eq!(lower.status(), StatusCode::BAD_REQUEST);
    assert!(message(lower).await.contains("would lower its quota"));

    // Meanwhile another admin raises the key directly, above what was asked.
    let set = admin_set(&s, "500", "20000", "ticket 7").await;
    assert_eq!(set.status(), StatusCode::OK);

    // The admin's card shows the live quota beside the one at request time.
    let listed: Vec<Value> = s.app.rpc(&s.admin, "admin/quota-requests", &[]).await.json().await.unwrap();
    assert_eq!((listed[0]["live_per_hour"].as_i64(), listed[0]["live_per_day"].as_i64()), (Some(500), Some(20_000)));
    assert_eq!(
        (listed[0]["current_per_hour"].as_i64(), listed[0]["current_per_day"].as_i64()),
        (Some(2), Some(10_000))
    );
    let page = s.app.page(&s.admin, "/admin/quota-requests").await.text().await.unwrap();
    let card = page.split("data-testid=\"live-quota\"").nth(1).expect("the card shows the live quota");
    assert!(card[..card.find("</dd>").unwrap()].contains("500/h · 20,000/day"), "{card}");

    // The stale approval (the numbers the form was filled with) would undo that raise: refused.
    for (h, d) in [("100", "10000"), ("100", "20000"), ("500", "10000")] {
        let stale = approve(&s, &id, h, d).await;
        assert_eq!(stale.status(), StatusCode::BAD_REQUEST, "{h} {d}");
        assert!(message(stale)
            .await
            .contains("The key now allows 500 requests per hour and 20,000 per day; approving"));
    }
    assert_eq!(key_limits(&s).await, (500, 20_000));
    assert_eq!(s.app.count("SELECT count(*) FROM quota_changes WHERE source = 'request'").await, 0);
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests WHERE status = 'pending'").await, 1);
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    assert!(!bell.iter().any(|n| n["title"].as_str().unwrap().contains("Quota raised")), "{bell:?}");

    // At or above the live quota it goes through.
    let ok = approve(&s, &id, "800", "20000").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(key_limits(&s).await, (800, 20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_a_revoked_key_cannot_be_approved() {
    let s = setup().await;
    let request: Value = ask(&s, "100", "", "launch").await.json().await.unwrap();
    let id = request["id"].to_string();
    assert_eq!(s.app.rpc(&s.merchant, "keys/revoke", &[("id", &s.key_id)]).await.status(), StatusCode::OK);

    // An admin who loaded the list before the revocation cannot approve it any more: the
    // revocation closed it.
    let res = approve(&s, &id, "100", "10000").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(message(res).await.contains("already cancelled"));
    assert_eq!(key_limits(&s).await, (2, 10_000));
    let listed: Vec<Value> = s.app.rpc(&s.admin, "admin/quota-requests", &[]).await.json().await.unwrap();
    assert_eq!((listed[0]["key_revoked"].as_bool(), listed[0]["status"].as_str()), (Some(true), Some("cancelled")));
}

/// The admin's form with a burst field: `None` leaves the field out.
async fn admin_set_burst(s: &Setup, per_hour: &str, burst: Option<&str>, reason: &str) -> reqwest::Response {
    let mut args =
        vec![("key_id", s.key_id.as_str()), ("per_hour", per_hour), ("per_day", "10000"), ("reason", reason)];
    args.extend(burst.map(|b| ("burst", b)));
    s.app.rpc(&s.admin, "admin/quota/set", &args).await
}

async fn policy(s: &Setup) -> String {
    let res = s.app.call("/api/v1/ping", &s.secret).await;
    res.headers()["ratelimit-policy"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_and_removes_a_burst_limit_and_the_next_call_obeys_it() {
    let s = setup().await;
    let set = admin_set_burst(&s, "100", Some("3"), "ticket 9: smooth out spikes").await;
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(policy(&s).await, "\"hour\";q=100;w=3600, \"day\";q=10000;w=86400, \"burst\";q=3;w=1");
    let keys = s.app.key_list(&s.merchant).await;
    assert_eq!(keys[0]["burst_per_second"], 3);
    let told = "SELECT count(*) FROM notifications WHERE body LIKE '%100 requests per hour and 10,000 per day, at most 3 per second \
                (before: 2 requests per hour and 10,000 per day, no burst limit). Reason: ticket 9%'";
    assert_eq!(s.app.count(told).await, 1);
    let audit = "SELECT count(*) FROM quota_changes WHERE source = 'admin' AND old_burst IS NULL AND new_burst = 3";
    assert_eq!(s.app.count(audit).await, 1);

    // Bad burst values are refused on their field and change nothing.
    for bad in ["0", "-2", "fast", "100001", "1.5"] {
        let res = admin_set_burst(&s, "200", Some(bad), "x").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], "burst", "{bad}: {body}");
    }
    // The same again is nothing to change, and says what the key has.
    let same = admin_set_burst(&s, "100", Some("3"), "again").await;
    assert_eq!(same.status(), StatusCode::BAD_REQUEST);
    assert!(message(same)
        .await
        .contains("100 requests per hour and 10,000 per day, at most 3 per second; nothing to change"));
    // A post without the field is refused, not read as "no burst limit".
    assert_eq!(admin_set_burst(&s, "150", None, "hour only").await.status(), StatusCode::BAD_REQUEST);
    assert!(policy(&s).await.starts_with("\"hour\";q=100;"));
    // "1,000" is read as a number.
    assert_eq!(admin_set_burst(&s, "150", Some(" 1,000 "), "wider").await.status(), StatusCode::OK);
    assert!(policy(&s).await.ends_with("\"burst\";q=1000;w=1"));

    // Blank removes it: the next call's policy has no burst.
    assert_eq!(admin_set_burst(&s, "150", Some(""), "no longer needed").await.status(), StatusCode::OK);
    assert_eq!(policy(&s).await, "\"hour\";q=150;w=3600, \"day\";q=10000;w=86400");
    assert_eq!(s.app.key_list(&s.merchant).await[0]["burst_per_second"], Value::Null);
    let removed =
        "SELECT count(*) FROM notifications WHERE body LIKE '%with no burst limit (before: at most 1,000 per second). Reason: no longer needed%'";
    assert_eq!(s.app.count(removed).await, 1);
    assert_eq!(s.app.count("SELECT count(*) FROM quota_changes WHERE source = 'admin'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_limit_cannot_exceed_the_daily_one_in_requests_and_admin_changes() {
    let s = setup().await;
    // The daily field left empty keeps 10,000 a day, below the hourly ask.
    let res = ask(&s, "50000", "", "big hour").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(message(res).await.contains("hourly limit cannot exceed the daily limit"));
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests").await, 0);

    // The admin's direct change.
    let set = admin_set(&s, "3000", "2000", "typo").await;
    assert_eq!(set.status(), StatusCode::BAD_REQUEST);
    assert!(message(set).await.contains("hourly limit cannot exceed the daily limit"));
    assert_eq!(key_limits(&s).await, (2, 10_000));

    // The admin's adjusted approval.
    let request: Value = ask(&s, "50000", "60000", "big launch").await.json().await.unwrap();
    let id = request["id"].to_string();
    let adjusted = approve(&s, &id, "50000", "40000").await;
    assert_eq!(adjusted.status(), StatusCode::BAD_REQUEST);
    assert!(message(adjusted).await.contains("hourly limit cannot exceed the daily limit"));
    assert_eq!(key_limits(&s).await, (2, 10_000));
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests WHERE status = 'pending'").await, 1);
    assert_eq!(s.app.count("SELECT count(*) FROM quota_changes WHERE source <> 'operator'").await, 0);

    // Equal is fine.
    assert_eq!(approve(&s, &id, "60000", "60000").await.status(), StatusCode::OK);
    assert_eq!(key_limits(&s).await, (60_000, 60_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_direct_change_is_told_to_the_owner() {
    let s = setup().await;
    let set = admin_set(&s, "500", "20000", "ticket 7").await;
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(key_limits(&s).await, (500, 20_000));
    let told = "SELECT count(*) FROM notifications n JOIN users u ON u.id = n.user_id \
                WHERE u.email = 'ann@example.com' AND n.kind = 'quota_changed' \
                AND n.body LIKE '%500 requests per hour and 20,000 per day (before: 2 requests per hour and 10,000 per day). Reason: ticket 7%'";
    assert_eq!(s.app.count(told).await, 1);
    let mailed = "SELECT count(*) FROM outbound_emails \
                  WHERE to_address = 'ann@example.com' AND subject LIKE 'Quota changed for%Checkout%'";
    assert_eq!(s.app.count(mailed).await, 1);

    // Setting the same limits again changes nothing: no audit row, no second message.
    let changes = "SELECT count(*) FROM quota_changes WHERE source = 'admin'";
    assert_eq!(s.app.count(changes).await, 1);
    let again = admin_set(&s, "500", "20,000", "ticket 7 again").await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(message(again).await.contains("already allows 500 requests per hour and 20,000 per day"));
    // A reason that did not decode (`%FF`) is refused too, as the merchants' reasons are.
    let garbled = admin_set(&s, "600", "20000", "ticket \u{FFFD}").await;
    assert_eq!(garbled.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.app.count(changes).await, 1);
    assert_eq!(s.app.count(told).await, 1);
    assert_eq!(s.app.count(mailed).await, 1);
}

/// Every pending request is on the admins' list, however many wait: one limit over pending and
/// decided ones hid the newest pending requests once more than 200 were waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pending_request_is_on_the_admins_list() {
    let s = setup().await;
    let ask_on = |key_id: String, reason: String| {
        let s = &s;
        async move {
            let args =
                [("key_id", key_id.as_str()), ("per_hour", "2000"), ("per_day", "20000"), ("reason", reason.as_str())];
            let res = s.app.rpc(&s.merchant, "quota-requests/create", &args).await;
            let body: Value = res.json().await.unwrap();
            assert!(body["id"].is_i64(), "{reason}: {body}");
            body
        }
    };
    let first = ask_on(s.key_id.clone(), "the first".into()).await;
    let res =
        s.app.rpc(&s.admin, "admin/quota-requests/deny", &[("id", &first["id"].to_string()), ("note", "no")]).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    // One open request per key: 205 keys.
    for i in 0..205 {
        let created: Value =
            s.app.rpc(&s.merchant, "keys/create", &[("name", &format!("key {i}"))]).await.json().await.unwrap();
        ask_on(created["key"]["id"].as_str().unwrap().to_owned(), format!("need {i}")).await;
    }
    let list: Vec<Value> = s.app.rpc(&s.admin, "admin/quota-requests", &[]).await.json().await.unwrap();
    let reasons: Vec<&str> = list.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 206);
    assert_eq!(reasons[0], "need 0", "the oldest pending first");
    assert_eq!(reasons[204], "need 204", "the newest pending one is there");
    assert_eq!(reasons[205], "the first", "then the decisions");
}

/// The audit trail is read a page at a time, newest first: every decision is on exactly one
/// page, also those made in the same instant. (Before, the page stopped at the newest 500.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_audit_trail_can_be_read_a_page_at_a_time() {
    let s = setup().await;
    // 230 changes, the first 120 of them in one instant, and a denial in that instant too.
    let mut conn = services::db::conn(&s.app.services.db).await.unwrap();
    diesel::sql_query(format!(
        "INSERT INTO quota_changes (api_key_id, source, old_per_hour, old_per_day, new_per_hour, new_per_day, reason, changed_at) \
         SELECT '{}', 'admin', 1, 1, 2, 2, 'change ' || i, \
           CASE WHEN i <= 120 THEN timestamptz '2026-11-01 12:00:00+00' ELSE timestamptz '2026-11-01 12:00:00+00' + i * interval '1 second' END \
         FROM generate_series(1, 230) AS i",
        s.key_id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let request: Value = ask(&s, "10", "", "x").await.json().await.unwrap();
    let res =
        s.app.rpc(&s.admin, "admin/quota-requests/deny", &[("id", &request["id"].to_string()), ("note", "tied")]).await;
    assert!(res.status().is_success());
    diesel::sql_query("UPDATE quota_requests SET decided_at = timestamptz '2026-11-01 12:00:00+00'")
        .execute(&mut conn)
        .await
        .unwrap();

    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    let mut before: Option<String> = None;
    loop {
        let args: Vec<(&str, &str)> = before.iter().map(|b| ("before", b.as_str())).collect();
        let (entries, older) = audit_trail(&s, &args).await;
        pages += 1;
        seen.extend(entries.iter().map(|e| e["reason"].as_str().unwrap().to_owned()));
        match older {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 232, "every entry once");
    assert_eq!(pages, 3);
    // The setup's own change of the key's quota (now) comes first.
    let expected: Vec<String> = ["test setup".to_owned()]
        .into_iter()
        .chain((121..=230).rev().map(|i| format!("change {i}")))
        .chain(["tied".to_owned()])
        .chain((1..=120).rev().map(|i| format!("change {i}")))
        .collect();
    assert_eq!(seen, expected, "newest first; in one instant, denials before changes, newest first");

    for bad in ["yesterday", "1.2.3", "1.0", "9999999999999999999.0.1"] {
        let res = s.app.rpc(&s.admin, "admin/quota-changes", &[("before", bad)]).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// Revoking a key closes its open request (before, it stayed on the admins' list, waiting for a
/// decision nobody could make), and an owner whose key an admin revoked is told, in the bell and
/// by email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_closes_its_request_and_tells_an_owner_who_did_not_do_it() {
    let s = setup().await;
    let request: Value = ask(&s, "10", "", "launch").await.json().await.unwrap();
    assert_eq!(request["status"], "pending");
    let res = s.app.rpc(&s.admin, "keys/revoke", &[("id", &s.key_id)]).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    // The key as the page shows it after: still with the admin's forms, not the owner's.
    let revoked: Value = res.json().await.unwrap();
    assert_eq!((revoked["viewer_is_admin"].as_bool(), revoked["yours"].as_bool()), (Some(true), Some(false)));

    let pending: Vec<Value> = s.app.rpc(&s.admin, "admin/quota-requests", &[]).await.json().await.unwrap();
    assert!(pending.iter().all(|r| r["status"] != "pending"), "{pending:?}");
    let mine: Vec<Value> =
        s.app.rpc(&s.merchant, "quota-requests/for-key", &[("key_id", &s.key_id)]).await.json().await.unwrap();
    assert_eq!(
        (mine[0]["status"].as_str(), mine[0]["decision_note"].as_str()),
        (Some("cancelled"), Some("The key was revoked."))
    );
    // The admins' list says why it closed, not that its merchant withdrew it.
    let page = s.app.page(&s.admin, "/admin/quota-requests").await.text().await.unwrap();
    assert!(page.contains("UTC: The key was revoked.</dd>"), "{page}");
    assert!(!page.contains("by the merchant"), "{page}");
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    let told: Vec<&str> =
        bell.iter().filter_map(|n| n["title"].as_str()).filter(|t| t.contains("was revoked")).collect();
    assert_eq!(told, ["API key “Checkout” was revoked"]);
    // By email too: their integration stops working, and they may not look at the bell for days.
    let mailed = "SELECT count(*) FROM outbound_emails WHERE to_address = 'ann@example.com' \
                  AND subject = 'API key “Checkout” was revoked' AND text_body LIKE '%An admin revoked your API key%'";
    assert_eq!(s.app.count(mailed).await, 1);
    // A second revocation changes nothing and tells nobody again.
    assert!(s.app.rpc(&s.admin, "keys/revoke", &[("id", &s.key_id)]).await.status().is_success());
    // The owner revoking their own key is not told about it.
    let created: Value = s.app.rpc(&s.merchant, "keys/create", &[("name", "Spare")]).await.json().await.unwrap();
    let spare = created["key"]["id"].as_str().unwrap();
    assert!(s.app.rpc(&s.merchant, "keys/revoke", &[("id", spare)]).await.status().is_success());
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    assert_eq!(bell.iter().filter(|n| n["title"].as_str().unwrap_or_default().contains("was revoked")).count(), 1);
    let any_revoked = "SELECT count(*) FROM outbound_emails WHERE subject LIKE '%was revoked'";
    assert_eq!(s.app.count(any_revoked).await, 1);
}

/// A transaction of the test's own that holds some locks until it is told to commit.
async fn hold_locks(
    app: &TestApp,
    statements: &str,
) -> impl std::ops::DerefMut<Target = diesel_async::AsyncPgConnection> {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    conn.batch_execute(&format!("BEGIN; {statements}")).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_and_a_revocation_at_the_same_moment_do_not_deadlock() {
    use diesel_async::SimpleAsyncConnection;
    let s = setup().await;
    let request: Value = ask(&s, "50", "", "launch").await.json().await.unwrap();
    let id = request["id"].to_string();
    // The key's limits held by someone else for a moment, so that the approval has started and
    // waits when the revocation comes (both then need what the other holds, unless both take the
    // key first).
    let mut holder =
        hold_locks(&s.app, &format!("SELECT 1 FROM api_key_quotas WHERE api_key_id = '{}' FOR UPDATE", s.key_id)).await;
    let approval = tokio::spawn({
        let (admin, url, id) = (s.admin.clone(), s.app.url("/rpc/admin/quota-requests/approve"), id.clone());
        async move {
            let form = [("id", id.as_str()), ("per_hour", "50"), ("per_day", "10000"), ("note", "")];
            admin.post(url).form(&form).send().await.unwrap().status()
        }
    });
    // The approval has the key and waits for its limits.
    s.app.wait_for_lock_waits(1).await;
    let revocation = tokio::spawn({
        let (merchant, url, key) = (s.merchant.clone(), s.app.url("/rpc/keys/revoke"), s.key_id.clone());
        async move { merchant.post(url).form(&[("id", key.as_str())]).send().await.unwrap().status() }
    });
    // The revocation waits for the key the approval holds.
    s.app.wait_for_lock_waits(2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (approval, revocation) = (approval.await.unwrap(), revocation.await.unwrap());
    assert_eq!(
        (approval, revocation),
        (StatusCode::OK, StatusCode::OK),
        "the approval went first, then the revocation"
    );
    let decided: Value =
        s.app.rpc(&s.merchant, "quota-requests/for-key", &[("key_id", &s.key_id)]).await.json().await.unwrap();
    assert_eq!(decided[0]["status"], "approved");
}

/// The merchant asks for 50/hour while `statements` (run by the test, uncommitted) hold their
/// locks; they commit once the ask waits for one of them. The answer: status and body.
async fn ask_while_held(s: &Setup, statements: &str) -> (StatusCode, String) {
    use diesel_async::SimpleAsyncConnection;
    let mut holder = hold_locks(&s.app, statements).await;
    let asked = tokio::spawn({
        let (merchant, url, key) = (s.merchant.clone(), s.app.url("/rpc/quota-requests/create"), s.key_id.clone());
        async move {
            let form = [("key_id", key.as_str()), ("per_hour", "50"), ("per_day", ""), ("reason", "launch")];
            let res = merchant.post(url).form(&form).send().await.unwrap();
            (res.status(), res.text().await.unwrap())
        }
    });
    s.app.wait_for_lock_waits(1).await;
    holder.batch_execute("COMMIT").await.unwrap();
    asked.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asked_while_its_key_is_being_revoked_is_refused() {
    let s = setup().await;
    // A revocation under way, as `revoke_by` makes it: the key marked, its open requests closed
    // (none yet), not committed.
    let revoking = format!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = '{0}'; \
         UPDATE quota_requests SET status = 'cancelled' WHERE api_key_id = '{0}' AND status = 'pending'",
        s.key_id
    );
    let (status, body) = ask_while_held(&s, &revoking).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("This key is revoked."), "{body}");
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests WHERE status = 'pending'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_judged_against_the_limits_the_key_has_when_it_is_stored() {
    let s = setup().await;
    // A raise to 100/hour under way (not committed) while the merchant asks for 50.
    let raising = format!("UPDATE api_key_quotas SET requests_per_hour = 100 WHERE api_key_id = '{}'", s.key_id);
    let (status, body) = ask_while_held(&s, &raising).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("above the current 100"), "{body}");
    assert_eq!(s.app.count("SELECT count(*) FROM quota_requests").await, 0);
}

/// An approval of limits the key already has (an admin set them meanwhile) raises nothing, and
/// the merchant is not told it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_that_raises_nothing_does_not_say_raised() {
    let s = setup().await;
    let request: Value = ask(&s, "50", "", "launch").await.json().await.unwrap();
    assert_eq!(admin_set(&s, "50", "10000", "ticket 12").await.status(), StatusCode::OK);
    let form = [("id", request["id"].to_string()), ("per_hour", "50".into()), ("per_day", "10000".into())];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).chain([("note", "")]).collect();
    assert_eq!(s.app.rpc(&s.admin, "admin/quota-requests/approve", &form).await.status(), StatusCode::OK);
    let bell: Vec<Value> = s.app.rpc(&s.merchant, "notifications/list", &[]).await.json().await.unwrap();
    assert_eq!(bell[0]["title"], "Quota request for “Checkout” approved", "{bell:?}");
}
