//! The mail sender against a real SMTP conversation on loopback (a minimal sink), the local
//! mail folder, and retries while the SMTP server is down.

mod common;

use common::smtp_sink::{SmtpSink, TEST_CA_FILE};
use common::TestApp;
use diesel_async::AsyncConnection;
use services::accounts::Role;
use std::time::{Duration, Instant};

use services::mailer::{enqueue, Email, Mailer, Urgency};

async fn queue(app: &TestApp, to: &str, subject: &str) {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let email = Email {
        to,
        subject,
        text: "plain body",
        html: "<p>html body</p>",
        attachments: &[],
        list_unsubscribe: None,
        credential_until: None,
    };
    conn.transaction::<_, services::ServiceError, _>(|c| Box::pin(async move { enqueue(c, &email, None).await }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_smtp_with_text_and_html_parts() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start().await;

    queue(&app, "ann@example.com", "Quota raised").await;
    let mailer = Mailer::new(Some(&sink.url()), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: Quota raised"), "{}", got[0]);
    assert!(got[0].contains("text/plain") && got[0].contains("text/html"), "{}", got[0]);
    // Machine-sent: vacation replies and other auto-responders leave it alone (RFC 3834).
    assert!(got[0].lines().any(|l| l == "Auto-Submitted: auto-generated"), "{}", got[0]);
    // Sent once: nothing is due any more.
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_smtp_is_down_and_goes_out_when_it_is_back() {
    let app = TestApp::spawn_without_mailer().await;
    // A port with nothing listening yet.
    let port = common::processes::free_port();
    queue(&app, "ann@example.com", "Alert").await;
    let mailer =
        Mailer::new(Some(&format!("smtp://127.0.0.1:{port}")), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    // Failed, kept, and scheduled later; make it due again as the backoff would.
    {
        use diesel_async::RunQueryDsl;
        let mut conn = services::db::conn(&app.services.db).await.unwrap();
        let n = diesel::sql_query(
            "UPDATE outbound_emails SET next_attempt_at = now() WHERE sent_at IS NULL AND attempts = 1 AND last_error IS NOT NULL",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(n, 1, "the failure is recorded with one attempt");
    }
    let sink = SmtpSink::start_on(port).await;
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    assert_eq!(sink.messages().len(), 1);
}

/// (attempts, last error) of every message not yet sent.
async fn unsent(app: &TestApp) -> Vec<(i32, Option<String>)> {
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::RunQueryDsl;
    use services::schema::outbound_emails::dsl::*;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    outbound_emails.filter(sent_at.is_null()).select((attempts, last_error)).load(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_credentials_in_the_url_authenticate_and_a_refused_login_keeps_the_mail() {
    let app = TestApp::spawn_without_mailer().await;
    // AUTH PLAIN of "mailer" / "s3cret": base64 of "\0mailer\0s3cret".
    let sink = SmtpSink::start_with_auth("AG1haWxlcgBzM2NyZXQ=").await;
    queue(&app, "ann@example.com", "Alert").await;
    let from = "keymeter <k@localhost>";

    let wrong =
        Mailer::new(Some(&format!("smtp://mailer:guess@127.0.0.1:{}", sink.port)), std::env::temp_dir(), from).unwrap();
    assert_eq!(wrong.deliver_due(&app.services.db).await.unwrap(), 1);
    assert!(sink.messages().is_empty());
    let kept = unsent(&app).await;
    assert_eq!(kept.len(), 1, "the message is kept for a retry");
    assert_eq!(kept[0].0, 1);
    assert!(kept[0].1.as_deref().is_some_and(|e| e.contains("535")), "{kept:?}");

    app.make_mail_due().await;
    let right = Mailer::new(Some(&format!("smtp://mailer:s3cret@127.0.0.1:{}", sink.port)), std::env::temp_dir(), from)
        .unwrap();
    assert_eq!(right.deliver_due(&app.services.db).await.unwrap(), 1);
    assert_eq!(sink.messages().len(), 1);
    assert!(unsent(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_required_mail_is_never_sent_in_clear() {
    let app = TestApp::spawn_without_mailer().await;
    // This server offers no STARTTLS.
    let sink = SmtpSink::start().await;
    queue(&app, "ann@example.com", "Alert").await;
    let url = format!("smtp://mailer:s3cret@127.0.0.1:{}?tls=required", sink.port);
    let mailer = Mailer::new(Some(&url), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    assert!(sink.messages().is_empty(), "nothing went out without TLS");
    let kept = unsent(&app).await;
    assert_eq!(kept.len(), 1);
    assert!(kept[0].1.as_deref().is_some_and(|e| e.contains("STARTTLS")), "the failure is recorded: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_starttls_with_the_relays_ca_trusted_mail_is_encrypted_and_authenticated() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_with_starttls_and_auth("AG1haWxlcgBzM2NyZXQ=").await;
    queue(&app, "ann@example.com", "Alert over TLS").await;
    let url = format!("smtp://mailer:s3cret@127.0.0.1:{}?tls=required", sink.port);
    let ca = std::path::Path::new(TEST_CA_FILE);
    let mailer = Mailer::with_smtp_ca(Some(&url), Some(ca), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    assert!(unsent(&app).await.is_empty(), "sent");
    // The sink takes AUTH and MAIL only after STARTTLS.
    assert_eq!(sink.messages_over_tls(), vec![true]);
    assert!(sink.messages()[0].contains("Subject: Alert over TLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_from_an_unknown_ca_is_refused_and_the_mail_kept() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_with_starttls_and_auth("AG1haWxlcgBzM2NyZXQ=").await;
    queue(&app, "ann@example.com", "Alert").await;
    // Only the public roots: the test CA is not among them.
    let url = format!("smtp://mailer:s3cret@127.0.0.1:{}?tls=required", sink.port);
    let mailer = Mailer::new(Some(&url), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    assert!(sink.messages().is_empty(), "nothing went to an unverified server");
    let kept = unsent(&app).await;
    assert_eq!(kept.len(), 1);
    assert!(kept[0].1.as_deref().is_some_and(|e| e.to_lowercase().contains("certificate")), "{kept:?}");
}

// lettre's connection pool needs a runtime even to be built.
#[tokio::test]
async fn a_smtp_ca_file_needs_tls_in_the_url_and_a_certificate() {
    let dir = std::env::temp_dir();
    let from = "keymeter <k@localhost>";
    let ca = std::path::Path::new(TEST_CA_FILE);
    let with_ca = |url: Option<&str>, ca: &std::path::Path| Mailer::with_smtp_ca(url, Some(ca), dir.clone(), from);
    assert!(with_ca(Some("smtp://smtp.example.com:587?tls=required"), ca).is_ok());
    assert!(with_ca(Some("smtps://smtp.example.com"), ca).is_ok());
    let refused = [
        with_ca(Some("smtp://smtp.example.com:25"), ca),
        with_ca(None, ca),
        with_ca(Some("smtps://smtp.example.com"), std::path::Path::new("/nonexistent/ca.pem")),
        // A key is not a certificate.
        with_ca(
            Some("smtps://smtp.example.com"),
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp-test-server.key")),
        ),
    ];
    for result in refused {
        assert!(matches!(result, Err(services::ServiceError::Invalid { .. })), "refused with a clear error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_mail_lands_in_the_mail_folder() {
    let app = TestApp::spawn_without_mailer().await;
    let dir = std::env::temp_dir().join(format!("keymeter-mailbox-{}", app.db_name));
    queue(&app, "ann@example.com", "Monthly summary").await;
    let mailer = Mailer::new(None, dir.clone(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(text.contains("Subject: Monthly summary"));
}

#[tokio::test]
async fn smtp_urls_with_tls_and_credentials_are_understood() {
    let dir = std::env::temp_dir();
    for url in [
        "smtp://127.0.0.1:2525",
        "smtp://mailer:secret@smtp.example.com:587?tls=required",
        "smtp://smtp.example.com?tls=opportunistic",
        "smtps://mailer:secret@smtp.example.com",
    ] {
        let mailer = Mailer::new(Some(url), dir.clone(), "keymeter <k@localhost>").unwrap();
        assert!(!mailer.describe().contains("secret"), "{}", mailer.describe());
    }
    assert!(Mailer::new(Some("http://example.com"), dir, "keymeter <k@localhost>").is_err());
}

async fn queue_text(app: &TestApp, subject: &str, text: &str) -> i64 {
    queue_as(app, subject, text, Urgency::Notice).await
}

async fn queue_as(app: &TestApp, subject: &str, text: &str, urgency: Urgency) -> i64 {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let email = Email {
        to: "ann@example.com",
        subject,
        text,
        html: "<p>html body</p>",
        attachments: &[],
        list_unsubscribe: None,
        credential_until: None,
    };
    conn.transaction::<_, services::ServiceError, _>(|c| {
        Box::pin(async move { services::mailer::enqueue_returning_id(c, &email, None, urgency).await })
    })
    .await
    .unwrap()
    .expect("queued")
}

/// `n` messages that `SmtpSink::start_slow` answers late.
async fn queue_slow_summaries(app: &TestApp, n: usize) {
    for i in 0..n {
        queue_text(app, &format!("Summary {i}"), "a slow summary").await;
    }
}

fn mailer_for(sink: &SmtpSink) -> Mailer {
    Mailer::new(Some(&sink.url()), std::env::temp_dir(), "keymeter <k@localhost>").unwrap()
}

/// Several instances share the outbox: each message is claimed just before it is sent, so the
/// senders share the work and none is sent twice. (Claims of 20 messages at a time for one
/// minute let a second instance take over and resend the tail of a slow batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_share_the_outbox_and_send_each_message_once() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_slow(Duration::from_millis(400)).await;
    queue_slow_summaries(&app, 6).await;
    let (a, b) = (mailer_for(&sink), mailer_for(&sink));
    let (sent_a, sent_b) = tokio::join!(a.deliver_due(&app.services.db), b.deliver_due(&app.services.db));
    let (sent_a, sent_b) = (sent_a.unwrap(), sent_b.unwrap());
    assert_eq!(sent_a + sent_b, 6);
    assert!(sent_a >= 1 && sent_b >= 1, "both senders worked: {sent_a} and {sent_b}");
    let messages = sink.messages();
    let mut subjects: Vec<&str> =
        messages.iter().filter_map(|m| m.lines().find(|l| l.starts_with("Subject:"))).collect();
    subjects.sort_unstable();
    subjects.dedup();
    assert_eq!((messages.len(), subjects.len()), (6, 6), "each message once");
    // Each message has its own Message-ID, the same on any resend.
    let mut ids: Vec<&str> =
        messages.iter().filter_map(|m| m.lines().find(|l| l.starts_with("Message-ID: <"))).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "{messages:?}");
    assert!(ids.iter().all(|id| id.ends_with("@localhost>")), "{ids:?}");
    assert!(unsent(&app).await.is_empty());
}

/// A send that ran out of time leaves nothing behind for the next one: the next message is
/// decided by the server's own answer to it. (With pooled connections, a refused message was
/// recorded as sent: it read the late answer meant for the one before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_timed_out_does_not_decide_the_next_one() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_slow(Duration::from_secs(3)).await;
    let slow = queue_text(&app, "Slow", "a slow one").await;
    let refused = queue_text(&app, "Refused", "spam, refused by the server").await;
    let mailer = mailer_for(&sink);
    let first = mailer.deliver_now(&app.services.db, &[slow], Instant::now() + Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert!(first.failed[0].error.contains("did not answer"), "{first:?}");
    let second =
        mailer.deliver_now(&app.services.db, &[refused], Instant::now() + Duration::from_secs(10)).await.unwrap();
    assert!(second.sent.is_empty(), "the refused message was taken as sent: {second:?}");
    assert_eq!(second.failed.len(), 1, "{second:?}");
    assert!(second.failed[0].error.contains("554"), "{second:?}");
    assert_eq!(unsent(&app).await.len(), 2, "both stay queued for a retry");
}

/// A sender told to stop finishes the message it is sending and leaves the rest queued (for
/// the other instances, or itself after a restart): a stop does not wait for the whole queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_sender_leaves_the_rest_of_the_queue() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_slow(Duration::from_millis(500)).await;
    queue_slow_summaries(&app, 5).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(mailer_for(&sink).run(app.services.db.clone(), stopped));
    assert_eq!(sink.wait_for(1, 10).await.len(), 1);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), sender).await.expect("the sender stopped").unwrap();
    let sent = sink.messages().len();
    assert!(sent < 5, "the stop waited for the whole queue ({sent} sent)");
    assert_eq!(unsent(&app).await.len(), 5 - sent, "the rest stays queued");
}

/// (attempts, last error, given up, retried until) of the only message in the outbox.
async fn outbox_state(app: &TestApp) -> (i32, String, bool, Option<chrono::DateTime<chrono::Utc>>) {
    use diesel::QueryDsl;
    use diesel_async::RunQueryDsl;
    use services::schema::outbound_emails::dsl::*;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let (n, error, given_up, until): (i32, Option<String>, Option<chrono::DateTime<chrono::Utc>>, _) =
        outbound_emails.select((attempts, last_error, failed_at, retry_until)).get_result(&mut conn).await.unwrap();
    (n, error.unwrap_or_default(), given_up.is_some(), until)
}

/// A recipient the mail server refuses for good is not retried every few minutes for ever: the
/// message is given up at once and shows so on the admins' mail page, where an admin (and only
/// an admin) can send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_for_good_is_given_up_and_an_admin_can_send_it_again() {
    let sink = SmtpSink::start_refusing_recipients("550 5.1.1 no such user").await;
    let app = TestApp::spawn_with(&[("SMTP_URL", sink.url())]).await;
    queue(&app, "gone@example.com", "Quota alert").await;
    // The server's own sender tries it.
    let mut state = outbox_state(&app).await;
    for _ in 0..150 {
        if state.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = outbox_state(&app).await;
    }
    let (attempts, error, given_up, _) = state;
    assert_eq!(attempts, 1, "tried once: {error}");
    assert!(error.contains("550"), "{error}");
    assert!(given_up, "a permanent refusal gives the message up");
    app.make_mail_due().await;
    let other_sender = Mailer::new(Some(&sink.url()), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(other_sender.deliver_due(&app.services.db).await.unwrap(), 0, "a given-up message is not retried");

    app.user("root@example.com", Role::Admin).await;
    app.user("ann@example.com", Role::Merchant).await;
    let admin = app.signed_in("root@example.com").await;
    let merchant = app.signed_in("ann@example.com").await;
    let page = app.rpc(&admin, "admin/mail", &[]).await.text().await.unwrap();
    assert!(page.contains("\"waiting\":0,\"failed\":1"), "{page}");
    let id = {
        use diesel::QueryDsl;
        use diesel_async::RunQueryDsl;
        use services::schema::outbound_emails::dsl::*;
        let mut conn = services::db::conn(&app.services.db).await.unwrap();
        outbound_emails.select(id).get_result::<i64>(&mut conn).await.unwrap().to_string()
    };
    // The list carries no message parts (with big summaries among them it weighed tens of MB);
    // an admin reads them when opening one.
    assert!(!page.contains("plain body") && !page.contains("html body"), "{page}");
    let body: serde_json::Value = app.rpc(&admin, "admin/mail/body", &[("id", &id)]).await.json().await.unwrap();
    assert_eq!((body["text"].as_str(), body["html"].as_str()), (Some("plain body"), Some("<p>html body</p>")));
    let nosy = app.rpc(&merchant, "admin/mail/body", &[("id", &id)]).await;
    assert_eq!(nosy.status(), reqwest::StatusCode::FORBIDDEN);
    let refused = app.rpc(&merchant, "admin/mail/send-again", &[("id", &id)]).await;
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(outbox_state(&app).await.2, "a merchant changes nothing");
    let missing = app.rpc(&admin, "admin/mail/send-again", &[("id", "999999")]).await;
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // The address was fixed on the mail server's side: sent again, it goes out.
    sink.accept_recipients();
    assert!(app.rpc(&admin, "admin/mail/send-again", &[("id", &id)]).await.status().is_success());
    assert_eq!(sink.wait_for(1, 15).await.len(), 1);
    app.wait_until_mail_sent().await;
    let again = app.rpc(&admin, "admin/mail/send-again", &[("id", &id)]).await;
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT, "a sent message cannot be queued again");
}

/// A temporary refusal is retried with backoff for three days from the first failure, then the
/// message is given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_retried_for_three_days_then_given_up() {
    let app = TestApp::spawn_without_mailer().await;
    let busy = SmtpSink::start_refusing_recipients("451 4.3.0 try again later").await;
    queue(&app, "ann@example.com", "Quota alert").await;
    let mailer = Mailer::new(Some(&busy.url()), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    let before = chrono::Utc::now();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let (attempts, error, given_up, until) = outbox_state(&app).await;
    assert_eq!((attempts, given_up), (1, false), "{error}");
    let until = until.expect("a retry period from the first failure");
    assert!(until >= before + chrono::TimeDelta::days(3) && until <= chrono::Utc::now() + chrono::TimeDelta::days(3));

    app.make_mail_due().await;
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let (attempts, _, given_up, same_until) = outbox_state(&app).await;
    assert_eq!((attempts, given_up, same_until), (2, false, Some(until)), "the period runs from the first failure");

    // Three days on.
    {
        use diesel_async::RunQueryDsl;
        let mut conn = services::db::conn(&app.services.db).await.unwrap();
        diesel::sql_query(
            "UPDATE outbound_emails SET retry_until = now() - interval '1 second', next_attempt_at = now()",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let (attempts, error, given_up, _) = outbox_state(&app).await;
    assert_eq!((attempts, given_up), (3, true), "{error}");
    assert!(error.contains("451"), "{error}");
    app.make_mail_due().await;
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 0);
}

/// A quota alert queued behind a month's summaries goes out first (it waited 40 s behind 1,200
/// summaries in the scale audit, and would wait minutes over a real SMTP relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_goes_out_before_the_summaries_queued_ahead_of_it() {
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start().await;
    for i in 0..5 {
        queue_as(&app, &format!("Summary {i}"), "monthly", Urgency::Bulk).await;
    }
    queue_text(&app, "Quota alert", "hourly quota used up").await;
    assert_eq!(mailer_for(&sink).deliver_due(&app.services.db).await.unwrap(), 6);
    assert_eq!(sink.subjects(), ["Quota alert", "Summary 0", "Summary 1", "Summary 2", "Summary 3", "Summary 4"]);
}

/// The admins' mail page lists the outbox a page at a time, newest first, and can list only the
/// given-up messages (the ones to act on). Before, it showed the newest 100 and no more: a
/// message given up behind them could not be found to be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_outbox_can_be_read_a_page_at_a_time_and_the_given_up_mail_found() {
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    // 130 messages; the 3rd, 4th and 120th were given up.
    diesel::sql_query(
        "INSERT INTO outbound_emails (to_address, subject, text_body, html_body, failed_at) \
         SELECT 'ann@example.com', 'message ' || i, 't', 'h', CASE WHEN i IN (3, 4, 120) THEN now() END \
         FROM generate_series(1, 130) AS i ORDER BY i",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    app.user("root@example.com", Role::Admin).await;
    let admin = app.signed_in("root@example.com").await;
    let read_all = |given_up: bool| {
        let (app, admin) = (&app, &admin);
        async move {
            let mut subjects = Vec::new();
            let mut before: Option<String> = None;
            loop {
                let mut args = vec![("given_up", given_up.to_string())];
                args.extend(before.iter().map(|b| ("before", b.clone())));
                let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let page: serde_json::Value = app.rpc(admin, "admin/mail", &args).await.json().await.unwrap();
                let messages = page["messages"].as_array().unwrap_or_else(|| panic!("{page}"));
                assert!(messages.len() <= 50, "a page holds 50");
                subjects.extend(messages.iter().map(|m| m["subject"].as_str().unwrap().to_owned()));
                if page["more"] != true {
                    return subjects;
                }
                before = Some(messages.last().unwrap()["id"].to_string());
            }
        }
    };
    let all = read_all(false).await;
    let expected: Vec<String> = (1..=130).rev().map(|i| format!("message {i}")).collect();
    assert_eq!(all, expected, "every message once, newest first");
    assert_eq!(read_all(true).await, ["message 120", "message 4", "message 3"]);
    let bad = app.rpc(&admin, "admin/mail", &[("before", "yesterday")]).await;
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
}

/// `keymeter report monthly` sends what it queued at once; a running server's sender may claim
/// a message first. The command used to say "not tried yet" and fail while that message was on
/// its way; it now waits for the other sender's try (within its deadline) and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_now_counts_a_message_another_sender_is_already_sending() {
    use diesel::QueryDsl;
    use diesel_async::RunQueryDsl;
    use services::schema::outbound_emails::dsl::*;
    let app = TestApp::spawn_without_mailer().await;
    let sink = SmtpSink::start_slow(Duration::from_secs(2)).await;
    let summary = queue_text(&app, "Summary", "a slow summary").await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let _server_sender = tokio::spawn(mailer_for(&sink).run(app.services.db.clone(), stopped));
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let mut claimed: Option<uuid::Uuid> = None;
    for _ in 0..100 {
        claimed = outbound_emails.find(summary).select(claim_token).first(&mut conn).await.unwrap();
        if claimed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Otherwise the command would send it itself, and the race this is about never ran.
    assert!(claimed.is_some(), "the server's sender claimed the message first");

    let command = mailer_for(&sink);
    let done =
        command.deliver_now(&app.services.db, &[summary], Instant::now() + Duration::from_secs(15)).await.unwrap();
    assert!(done.not_tried.is_empty(), "{done:?}");
    assert!(services::mailer::unsent(&app.services.db, &[summary]).await.unwrap().is_empty());
    assert_eq!(sink.messages().len(), 1, "sent once, by the server's sender");
}
