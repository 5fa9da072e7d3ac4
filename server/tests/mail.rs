//! The mail sender against a real SMTP conversation on loopback (a minimal sink), the local
//! mail folder, and retries while the SMTP server is down.

mod common;

use std::sync::{Arc, Mutex};

use common::TestApp;
use diesel_async::AsyncConnection;
use services::mailer::{enqueue, Email, Mailer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Accepts SMTP sessions and keeps every message's DATA.
async fn smtp_sink(listener: TcpListener, received: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { return };
        let received = received.clone();
        tokio::spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = write.write_all(b"220 sink ESMTP\r\n").await;
            while let Ok(Some(line)) = lines.next_line().await {
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                    b"250 sink\r\n"
                } else if upper.starts_with("DATA") {
                    let _ = write.write_all(b"354 go on\r\n").await;
                    let mut data = String::new();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if l == "." {
                            break;
                        }
                        data.push_str(&l);
                        data.push('\n');
                    }
                    received.lock().unwrap().push(data);
                    b"250 queued\r\n"
                } else if upper.starts_with("QUIT") {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 ok\r\n"
                };
                let _ = write.write_all(reply).await;
            }
        });
    }
}

async fn queue(app: &TestApp, to: &str, subject: &str) {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let email = Email { to, subject, text: "plain body", html: "<p>html body</p>", attachments: &[] };
    conn.transaction::<_, services::ServiceError, _>(|c| Box::pin(async move { enqueue(c, &email, None).await }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_smtp_with_text_and_html_parts() {
    let app = TestApp::spawn_without_mailer().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(smtp_sink(listener, received.clone()));

    queue(&app, "ann@example.com", "Quota raised").await;
    let mailer =
        Mailer::new(Some(&format!("smtp://127.0.0.1:{port}")), std::env::temp_dir(), "keymeter <k@localhost>").unwrap();
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: Quota raised"), "{}", got[0]);
    assert!(got[0].contains("text/plain") && got[0].contains("text/html"), "{}", got[0]);
    // Sent once: nothing is due any more.
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_smtp_is_down_and_goes_out_when_it_is_back() {
    let app = TestApp::spawn_without_mailer().await;
    // A port with nothing listening yet.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
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
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(smtp_sink(listener, received.clone()));
    assert_eq!(mailer.deliver_due(&app.services.db).await.unwrap(), 1);
    assert_eq!(received.lock().unwrap().len(), 1);
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
