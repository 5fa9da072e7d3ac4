//! Sign-in, sessions and page access through the real server.

mod common;

use common::{client, TestApp, PASSWORD};
use reqwest::StatusCode;
use services::accounts::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;

    let wrong = app.login(&client(), "ann@example.com", "not the password").await;
    let unknown = app.login(&client(), "nobody@example.com", PASSWORD).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let (wrong, unknown) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    assert!(wrong.contains("Invalid email or password"), "{wrong}");
    assert_eq!(wrong, unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sign_in_sets_an_httponly_samesite_cookie() {
    let app = TestApp::spawn().await;
    app.user("bob@example.com", Role::Merchant).await;
    let res = app.login(&client(), "Bob@Example.com ", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "/dashboard/developers/api-keys");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("km_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
}

/// Signing in again ends the session the browser presented: a token that someone else may
/// have seen (or planted) does not outlive the next sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_again_ends_the_browsers_previous_session() {
    let app = TestApp::spawn().await;
    app.user("bob@example.com", Role::Merchant).await;
    let cookie_of = |res: &reqwest::Response| {
        let set = res.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    };
    let first = cookie_of(&app.login(&client(), "bob@example.com", PASSWORD).await);
    let page = |cookie: String| {
        let url = app.url("/dashboard/developers/api-keys");
        async move { client().get(url).header("cookie", cookie).send().await.unwrap().status() }
    };
    assert_eq!(page(first.clone()).await, StatusCode::OK);

    let again =
        app.login_request(&client(), "bob@example.com", PASSWORD).header("cookie", &first).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::FOUND);
    let second = cookie_of(&again);
    assert_ne!(first, second);
    assert_eq!(page(second).await, StatusCode::OK);
    assert_eq!(page(first).await, StatusCode::FOUND, "the earlier session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_down() {
    repeated_failures_are_slowed_down_with(&[]).await;
}

/// The throttle's counts live in different hash slots: on a cluster too they are counted (a
/// pipeline of their scripts was refused as cross-slot there, and sign-in went unthrottled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_down_on_a_redis_cluster() {
    repeated_failures_are_slowed_down_with(&[("REDIS_URL", common::env("KEYMETER_TEST_REDIS_CLUSTER"))]).await;
}

async fn repeated_failures_are_slowed_down_with(settings: &[(&'static str, String)]) {
    let app = TestApp::spawn_with(settings).await;
    // Failures are counted per address in the shared Redis: use an address of this test only.
    let carol = format!("carol-{}@example.com", app.db_name);
    app.user(&carol, Role::Merchant).await;
    for _ in 0..5 {
        let res = app.login(&client(), &carol, "guess guess guess").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    // Now even the right password is refused for a while.
    let res = app.login(&client(), &carol, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.text().await.unwrap().contains("Try again in"));
}

/// Behind a trusted reverse proxy every request comes from the proxy's address: the client is
/// the one its `X-Forwarded-For` names, so one client's guesses do not lock out everyone behind
/// it. From a peer that is not trusted the header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client() {
    let login_from = |app: &TestApp, forwarded: &str, password: &str| {
        let req = app.login_request(&client(), "ann@example.com", password).header("x-forwarded-for", forwarded);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let proxied = TestApp::spawn_with(&[("KEYMETER_TRUSTED_PROXIES", "127.0.0.1, ::1".into())]).await;
    proxied.user("ann@example.com", Role::Merchant).await;
    for _ in 0..5 {
        assert_eq!(login_from(&proxied, "203.0.113.5", "guess guess").await, 400);
    }
    assert_eq!(login_from(&proxied, "203.0.113.5", PASSWORD).await, 429);
    // The client cannot escape by prepending an address: the proxy's own entry is the one read.
    assert_eq!(login_from(&proxied, "198.51.100.1, 203.0.113.5", PASSWORD).await, 429);
    // Another client behind the same proxy signs in.
    assert_eq!(login_from(&proxied, "203.0.113.6", PASSWORD).await, 302);

    let direct = TestApp::spawn().await;
    direct.user("ann@example.com", Role::Merchant).await;
    for i in 0..5 {
        assert_eq!(login_from(&direct, &format!("203.0.113.{i}"), "guess guess").await, 400);
    }
    assert_eq!(login_from(&direct, "203.0.113.99", PASSWORD).await, 429, "the header is not trusted");
}

/// Strangers guessing at an address from many clients lock it (50 failures), but not for a
/// browser that signed in to it before: it has a count of its own, and gets in. A browser
/// known to another account is not known to this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_guesses_do_not_lock_the_owner_out_of_a_browser_that_signed_in_before() {
    let app = TestApp::spawn_with(&[("KEYMETER_TRUSTED_PROXIES", "127.0.0.1, ::1".into())]).await;
    let owner = format!("owner-{}@example.com", app.db_name);
    let stranger = format!("stranger-{}@example.com", app.db_name);
    app.user(&owner, Role::Merchant).await;
    app.user(&stranger, Role::Merchant).await;

    let owners_browser = client();
    let first = app.login_forwarded(&owners_browser, "198.51.100.10", &owner, PASSWORD).await;
    assert_eq!(first.status(), StatusCode::FOUND);
    let device_cookie = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("km_device="))
        .expect("the browser is marked as known");
    for attribute in ["Path=/rpc/auth", "HttpOnly", "SameSite=Lax", "Max-Age=5184000"] {
        assert!(device_cookie.contains(attribute), "{attribute} in {device_cookie}");
    }
    // The stranger's own browser is known too, but to the stranger's account.
    let strangers_browser = client();
    assert_eq!(app.login_forwarded(&strangers_browser, "203.0.113.200", &stranger, PASSWORD).await.status(), 302);

    // Guesses from eleven clients: the fifty allowed at the address fail, the rest are refused.
    let mut failed = 0;
    for client_no in 0..11 {
        for _ in 0..5 {
            let status =
                app.login_forwarded(&client(), &format!("203.0.113.{client_no}"), &owner, "guess guess").await.status();
            assert!(matches!(status.as_u16(), 400 | 429), "{status}");
            failed += usize::from(status == StatusCode::BAD_REQUEST);
        }
    }
    assert_eq!(failed, 50);
    // The address is locked for a new browser, even with the right password from a new client,
    // and for the stranger's browser, known only to the stranger's account.
    let new_browser = app.login_forwarded(&client(), "198.51.100.11", &owner, PASSWORD).await;
    assert_eq!(new_browser.status(), StatusCode::TOO_MANY_REQUESTS);
    let elsewhere = app.login_forwarded(&strangers_browser, "203.0.113.200", &owner, PASSWORD).await;
    assert_eq!(elsewhere.status(), StatusCode::TOO_MANY_REQUESTS);

    // The owner's browser gets in, even from one of the guessing clients' addresses.
    let owner_again = app.login_forwarded(&owners_browser, "203.0.113.0", &owner, PASSWORD).await;
    assert_eq!(owner_again.status(), StatusCode::FOUND);
    assert_eq!(app.rpc(&owners_browser, "keys/list", &[]).await.status(), StatusCode::OK);

    // A known browser has a few tries of its own, then it waits too.
    for _ in 0..5 {
        assert_eq!(app.login_forwarded(&owners_browser, "198.51.100.10", &owner, "guess guess").await.status(), 400);
    }
    let locked = app.login_forwarded(&owners_browser, "198.51.100.10", &owner, PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    // An operator's lift (as `keymeter user set-password` does) ends the browser's lock too.
    services::accounts::lift_sign_in_lockout(&app.services.redis, &app.services.namespace, &owner).await.unwrap();
    let lifted = app.login_forwarded(&owners_browser, "198.51.100.10", &owner, PASSWORD).await;
    assert_eq!(lifted.status(), StatusCode::FOUND);
}

/// A known browser's failures also use up its network client's tries for other browsers there
/// (a private window next to it gets no fresh ones), and its sign-in forgets both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_browsers_failures_count_for_its_network_too() {
    let app = TestApp::spawn_with(&[("KEYMETER_TRUSTED_PROXIES", "127.0.0.1, ::1".into())]).await;
    let owner = format!("net-{}@example.com", app.db_name);
    app.user(&owner, Role::Merchant).await;
    let known = client();
    assert_eq!(app.login_forwarded(&known, "198.51.100.30", &owner, PASSWORD).await.status().as_u16(), 302);

    // Four slips, then in: the slips are forgotten, from the browser and from its network.
    for _ in 0..4 {
        assert_eq!(app.login_forwarded(&known, "198.51.100.30", &owner, "slip slip slip").await.status().as_u16(), 400);
    }
    assert_eq!(app.login_forwarded(&known, "198.51.100.30", &owner, PASSWORD).await.status().as_u16(), 302);
    let private_window = client();
    for _ in 0..4 {
        assert_eq!(
            app.login_forwarded(&private_window, "198.51.100.30", &owner, "slip slip slip").await.status().as_u16(),
            400
        );
    }
    assert_eq!(
        app.login_forwarded(&private_window, "198.51.100.30", &owner, PASSWORD).await.status().as_u16(),
        302,
        "4 + 4 would be over 5"
    );

    // Five failures from a (new) known browser: it waits, and so does a new browser on its
    // network; a browser elsewhere does not.
    let guesser = client();
    assert_eq!(app.login_forwarded(&guesser, "198.51.100.31", &owner, PASSWORD).await.status().as_u16(), 302);
    for _ in 0..5 {
        assert_eq!(app.login_forwarded(&guesser, "198.51.100.31", &owner, "guess guess").await.status().as_u16(), 400);
    }
    assert_eq!(app.login_forwarded(&guesser, "198.51.100.31", &owner, PASSWORD).await.status().as_u16(), 429);
    assert_eq!(app.login_forwarded(&client(), "198.51.100.31", &owner, PASSWORD).await.status().as_u16(), 429);
    assert_eq!(app.login_forwarded(&client(), "198.51.100.32", &owner, PASSWORD).await.status().as_u16(), 302);
}

fn device_cookie(res: &reqwest::Response) -> String {
    let set =
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).find(|c| c.starts_with("km_device="));
    set.expect("a km_device cookie").trim_start_matches("km_device=").split(';').next().unwrap().to_owned()
}

/// A browser's known-device token is replaced at every sign-in: one planted by someone else
/// (their own, known to their account) is worth nothing once the owner signs in. A new
/// password forgets every browser of the account, but the one that changed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_browser_tokens_are_replaced_at_sign_in_and_forgotten_with_the_password() {
    use services::accounts::known_devices::{self, DeviceToken};
    let app = TestApp::spawn().await;
    let owner = app.user("kim@example.com", Role::Merchant).await;
    app.user("mallory@example.com", Role::Merchant).await;
    let known = |token: String, email: &'static str| {
        let db = app.services.db.clone();
        async move { known_devices::recognizes(&db, &DeviceToken::parse(&token).unwrap(), email).await.unwrap() }
    };

    let planted = device_cookie(&app.login(&client(), "mallory@example.com", PASSWORD).await);
    assert!(known(planted.clone(), "mallory@example.com").await);
    let owners_browser = client();
    let planting = app
        .login_request(&owners_browser, "kim@example.com", PASSWORD)
        .header("cookie", format!("km_device={planted}"));
    let res = planting.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let fresh = device_cookie(&res);
    assert_ne!(fresh, planted);
    assert!(!known(planted.clone(), "kim@example.com").await, "the planted token is not the owner's");
    assert!(!known(planted, "mallory@example.com").await, "nor is it anyone's any more");
    assert!(known(fresh.clone(), "kim@example.com").await);
    assert!(known(fresh, "mallory@example.com").await, "the browser stays known to both accounts");

    // Kim's second browser; then she changes her password from the first.
    let second = app.login(&client(), "kim@example.com", PASSWORD).await;
    let second = device_cookie(&second);
    let args = [
        ("current_password", PASSWORD),
        ("new_password", "a newer long password"),
        ("confirm_password", "a newer long password"),
    ];
    let changed = owners_browser.post(app.url("/rpc/auth/password")).form(&args).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let changer = device_cookie(&changed);
    assert!(!known(second, "kim@example.com").await, "the other browser is forgotten");
    assert!(known(changer.clone(), "kim@example.com").await, "the one that changed it is known again");

    // An operator's reset forgets them all.
    let new = services::accounts::Password::parse("an operator's password").unwrap();
    let email = services::accounts::Email::parse("kim@example.com").unwrap();
    services::accounts::reset_password(&app.services.db, &email, &new, &app.services.settings.public_url)
        .await
        .unwrap();
    assert!(!known(changer, "kim@example.com").await);
    let known_rows =
        format!("SELECT count(*) FROM known_devices WHERE user_id = {} AND forgotten_at IS NULL", owner.id);
    assert_eq!(app.count(&known_rows).await, 0);
}

/// A sign-in from a browser the account does not know, while it knows another, tells the owner
/// in the bell and by email, naming the browser and its network address; the first browser
/// and the known ones do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_from_a_new_browser_tells_the_owner() {
    let app = TestApp::spawn().await;
    let owner = app.user("nia@example.com", Role::Merchant).await;
    let (laptop, phone) = (common::browser(common::FIREFOX_ON_LINUX), common::browser(common::CHROME_ON_ANDROID));
    let notices = || {
        app.texts(
            "SELECT text_body AS t FROM outbound_emails WHERE to_address = 'nia@example.com' \
             AND subject = 'New sign-in to your keymeter account' ORDER BY id",
        )
    };

    assert_eq!(app.login(&laptop, "nia@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    assert!(notices().await.is_empty(), "the account's first browser is not news");
    assert_eq!(app.login(&phone, "nia@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    let sent = notices().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    for part in [
        "nia@example.com",
        "Chrome on Android",
        "network address 127.0.0.1",
        "change your password",
        "/dashboard/account",
    ] {
        assert!(sent[0].contains(part), "{part:?} in {}", sent[0]);
    }
    let bell = format!("SELECT count(*) FROM notifications WHERE user_id = {} AND kind = 'new_sign_in'", owner.id);
    assert_eq!(app.count(&bell).await, 1);

    // Known browsers sign in again without a word.
    for b in [&laptop, &phone, &laptop] {
        assert_eq!(app.login(b, "nia@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    }
    assert_eq!(notices().await.len(), 1);

    // Signing in again and again without keeping cookies is one notice a day, not one each.
    for _ in 0..3 {
        assert_eq!(app.login(&client(), "nia@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    }
    let sent = notices().await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[1].contains("a browser that did not say which it is"), "{}", sent[1]);

    // Her own new password (set on the phone) forgets her browsers for the throttle, but her
    // laptop signing in with it is not news. (The laptop never had a notice: none to dedupe.)
    let new = "a new long passphrase";
    let args = [("current_password", PASSWORD), ("new_password", new), ("confirm_password", new)];
    assert_eq!(app.rpc(&phone, "auth/password", &args).await.status(), StatusCode::OK);
    assert_eq!(app.login(&laptop, "nia@example.com", new).await.status(), StatusCode::FOUND);
    assert_eq!(notices().await.len(), 2);
}

/// An account keeps at most 20 known browsers: signing in from a 21st forgets the longest unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_knows_at_most_twenty_browsers() {
    use services::accounts::known_devices;
    let app = TestApp::spawn().await;
    let owner = app.user("lee@example.com", Role::Merchant).await;
    let mut tokens = Vec::new();
    for _ in 0..21 {
        let from = services::accounts::SignInFrom::client("203.0.113.9");
        tokens.push(known_devices::remember(&app.services, &owner, &from).await.unwrap());
    }
    assert_eq!(app.count(&format!("SELECT count(*) FROM known_devices WHERE user_id = {}", owner.id)).await, 20);
    assert!(!known_devices::recognizes(&app.services.db, &tokens[0], "lee@example.com").await.unwrap());
    for token in &tokens[1..] {
        assert!(known_devices::recognizes(&app.services.db, token, "lee@example.com").await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_needs_a_session_and_admin_needs_an_admin() {
    let app = TestApp::spawn().await;
    app.user("dave@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;

    let anonymous = app.page(&client(), "/dashboard/developers/api-keys").await;
    assert_eq!(anonymous.status(), StatusCode::FOUND);
    assert!(anonymous.headers()["location"].to_str().unwrap().starts_with("/login"));

    let merchant = app.signed_in("dave@example.com").await;
    let page = app.page(&merchant, "/dashboard/developers/api-keys").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("dave@example.com"));

    let admin_page = app.page(&merchant, "/admin").await;
    assert_eq!(admin_page.status(), StatusCode::FORBIDDEN);
    let admin_rpc = app.rpc(&merchant, "admin/keys/search", &[]).await;
    assert_eq!(admin_rpc.status(), StatusCode::FORBIDDEN);

    let admin = app.signed_in("root@example.com").await;
    assert_eq!(app.page(&admin, "/admin").await.status(), StatusCode::OK);
    assert_eq!(app.rpc(&admin, "admin/keys/search", &[]).await.status(), StatusCode::OK);
}

/// Not only browsers: any client (curl, a no-JS browser, a link checker) gets a real redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_out_visits_to_protected_pages_are_redirected_to_sign_in() {
    let app = TestApp::spawn().await;
    app.user("fay@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;

    for (path, next) in [
        ("/dashboard/developers/api-keys?page=2", "/dashboard/developers/api-keys%3Fpage%3D2"),
        (
            "/dashboard/developers/api-keys/00000000-0000-0000-0000-000000000000/usage",
            "/dashboard/developers/api-keys/00000000-0000-0000-0000-000000000000/usage",
        ),
        ("/admin/quota-requests", "/admin/quota-requests"),
        ("/admin", "/admin"),
        // A no-JS form's error in the URL (its session had ended) is not carried to sign-in.
        (
            "/dashboard/developers/api-keys?__path=%2Frpc%2Fkeys%2Fcreate&__err=eyJlcnJvciI6IlVuYXV0aG9yaXplZCJ9",
            "/dashboard/developers/api-keys",
        ),
    ] {
        for accept in [None, Some("*/*"), Some("text/html")] {
            let mut req = client().get(app.url(path));
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::FOUND, "{path} {accept:?}");
            assert_eq!(res.headers()["location"], format!("/login?next={next}"), "{path} {accept:?}");
        }
        // A stale or forged session cookie is the same as none.
        let res = client().get(app.url(path)).header("cookie", "km_session=not-a-session").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "{path} with a bad cookie");
    }

    // Following the redirect (curl -L) lands on the sign-in form.
    let following = reqwest::Client::new();
    let res = following.get(app.url("/admin/quota-requests")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.url().path(), "/login");
    assert!(res.text().await.unwrap().contains("type=\"password\""));

    // Signed in, the same pages render (whatever the client accepts); a merchant on an admin
    // page still gets the 403 page, not a sign-in redirect.
    let merchant = app.signed_in("fay@example.com").await;
    let admin = app.signed_in("root@example.com").await;
    for (c, path, status) in [
        (&merchant, "/dashboard/developers/api-keys", StatusCode::OK),
        (&merchant, "/admin/quota-requests", StatusCode::FORBIDDEN),
        (&admin, "/admin/quota-requests", StatusCode::OK),
        (&admin, "/dashboard/developers/api-keys", StatusCode::OK),
    ] {
        let res = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert!(res.headers().get("location").is_none(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ends_the_session() {
    let app = TestApp::spawn().await;
    app.user("erin@example.com", Role::Merchant).await;
    let c = app.signed_in("erin@example.com").await;
    assert_eq!(app.rpc(&c, "keys/list", &[]).await.status(), StatusCode::OK);
    app.rpc(&c, "auth/logout", &[]).await;
    assert_eq!(app.rpc(&c, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED);
}

/// A session ends after 12 hours unused, before its 7-day expiry; using it keeps it going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_unused_for_twelve_hours_ends() {
    let app = TestApp::spawn().await;
    let user = app.user("idle@example.com", Role::Merchant).await;
    let used = app.signed_in("idle@example.com").await;
    let left = app.signed_in("idle@example.com").await;
    let (newest, oldest) = ("DESC", "ASC");
    let session = |order: &str| {
        format!("(SELECT token_hash FROM sessions WHERE user_id = {} ORDER BY created_at {order} LIMIT 1)", user.id)
    };
    // The first sign-in was last used 11 h 55 min ago, the second 12 h 1 min ago.
    let set_last_seen = |order: &str, ago: &str| {
        format!("UPDATE sessions SET last_seen_at = now() - interval '{ago}' WHERE token_hash = {}", session(order))
    };
    assert_eq!(app.run_sql(&set_last_seen(oldest, "11 hours 55 minutes")).await, 1);
    assert_eq!(app.run_sql(&set_last_seen(newest, "12 hours 1 minute")).await, 1);

    assert_eq!(app.rpc(&left, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED);
    let page = app.page(&left, "/dashboard/developers/api-keys").await;
    assert_eq!(page.status(), StatusCode::FOUND, "sent to sign in");
    assert!(page.headers()["location"].to_str().unwrap().starts_with("/login"));

    assert_eq!(app.rpc(&used, "keys/list", &[]).await.status(), StatusCode::OK);
    let idle_for = format!(
        "SELECT extract(epoch FROM now() - last_seen_at)::bigint FROM sessions WHERE token_hash = {}",
        session(oldest)
    );
    assert!(app.count(&idle_for).await < 60, "the use was noted: the session is good for another 12 hours");

    // A use within 5 minutes of the last noted one is not written again.
    assert_eq!(app.run_sql(&set_last_seen(oldest, "1 minute")).await, 1);
    assert_eq!(app.rpc(&used, "keys/list", &[]).await.status(), StatusCode::OK);
    assert!(app.count(&idle_for).await >= 59, "noted at most every 5 minutes");
}

/// The account page lists where the account is signed in, by browser, and signs out
/// everywhere else; other accounts' sessions are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_where_they_are_signed_in_and_signs_out_everywhere_else() {
    let app = TestApp::spawn().await;
    app.user("ivy@example.com", Role::Merchant).await;
    app.user("jon@example.com", Role::Merchant).await;
    let (laptop, phone) = (common::browser(common::FIREFOX_ON_LINUX), common::browser(common::CHROME_ON_ANDROID));
    for b in [&laptop, &phone] {
        assert_eq!(app.login(b, "ivy@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    }
    let jon = app.signed_in("jon@example.com").await;

    let listed: serde_json::Value = app.rpc(&laptop, "auth/sessions", &[]).await.json().await.unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mut seen: Vec<(String, bool)> = listed
        .iter()
        .map(|s| (s["browser"].as_str().unwrap().to_owned(), s["this_browser"].as_bool().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(seen, [("Chrome on Android".to_owned(), false), ("Firefox on Linux".to_owned(), true)]);

    let ended = app.rpc(&laptop, "auth/sign_out_others", &[]).await;
    assert_eq!(ended.status(), StatusCode::OK);
    assert_eq!(ended.text().await.unwrap(), "1");
    assert_eq!(app.rpc(&phone, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.rpc(&laptop, "keys/list", &[]).await.status(), StatusCode::OK);
    assert_eq!(app.rpc(&jon, "keys/list", &[]).await.status(), StatusCode::OK, "another account's session stays");
    let listed: serde_json::Value = app.rpc(&laptop, "auth/sessions", &[]).await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Signed out, neither answers.
    assert_eq!(app.rpc(&phone, "auth/sessions", &[]).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.rpc(&phone, "auth/sign_out_others", &[]).await.status(), StatusCode::UNAUTHORIZED);
}

/// Admins find accounts by address and disable or enable them (as the CLI does); merchants
/// cannot, and an admin cannot disable themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disables_and_enables_an_account() {
    let app = TestApp::spawn().await;
    app.user("root@example.com", Role::Admin).await;
    let pat = app.user("pat@example.com", Role::Merchant).await;
    app.user("pat_2@example.com", Role::Merchant).await;
    services::keys::api_keys::create(&app.services.db, pat.id, &services::keys::KeyName::parse("shop").unwrap())
        .await
        .unwrap();
    let admin = app.signed_in("root@example.com").await;
    let merchant = app.signed_in("pat@example.com").await;

    let found: serde_json::Value =
        app.rpc(&admin, "admin/accounts/search", &[("q", "pat_")]).await.json().await.unwrap();
    let emails: Vec<&str> =
        found["accounts"].as_array().unwrap().iter().map(|a| a["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["pat_2@example.com"], "an underscore is matched as typed");
    let found: serde_json::Value =
        app.rpc(&admin, "admin/accounts/search", &[("q", "pat@")]).await.json().await.unwrap();
    assert_eq!(found["accounts"][0]["active_keys"], 1);
    assert_eq!(found["accounts"][0]["disabled_at"], serde_json::Value::Null);
    assert_eq!(app.rpc(&merchant, "admin/accounts/search", &[]).await.status(), StatusCode::FORBIDDEN);
    let by_merchant =
        app.rpc(&merchant, "admin/accounts/switch", &[("email", "root@example.com"), ("disable", "on")]).await;
    assert_eq!(by_merchant.status(), StatusCode::FORBIDDEN);

    let own = app.rpc(&admin, "admin/accounts/switch", &[("email", "root@example.com"), ("disable", "on")]).await;
    assert_eq!(own.status(), StatusCode::BAD_REQUEST);
    assert!(own.text().await.unwrap().contains("You cannot disable your own account"));
    let nobody = app.rpc(&admin, "admin/accounts/switch", &[("email", "nobody@example.com"), ("disable", "on")]).await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);

    let off: serde_json::Value = app
        .rpc(&admin, "admin/accounts/switch", &[("email", "pat@example.com"), ("disable", "on")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((&off["changed"], &off["sessions_ended"]), (&serde_json::json!(true), &serde_json::json!(1)));
    assert_eq!(app.rpc(&merchant, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(&client(), "pat@example.com", PASSWORD).await.status(), StatusCode::BAD_REQUEST);
    let found: serde_json::Value =
        app.rpc(&admin, "admin/accounts/search", &[("q", "pat@")]).await.json().await.unwrap();
    assert!(found["accounts"][0]["disabled_at"].is_string());

    let on: serde_json::Value =
        app.rpc(&admin, "admin/accounts/switch", &[("email", "pat@example.com")]).await.json().await.unwrap();
    assert_eq!(on["changed"], true);
    assert_eq!(app.login(&client(), "pat@example.com", PASSWORD).await.status(), StatusCode::FOUND);
    let again: serde_json::Value =
        app.rpc(&admin, "admin/accounts/switch", &[("email", "pat@example.com")]).await.json().await.unwrap();
    assert_eq!(again["changed"], false, "it was not disabled");

    // Another admin can be disabled; the last one who can sign in cannot (nor by the CLI).
    app.user("ops@example.com", Role::Admin).await;
    let ops: serde_json::Value = app
        .rpc(&admin, "admin/accounts/switch", &[("email", "ops@example.com"), ("disable", "on")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ops["changed"], true);
    let root = services::accounts::Email::parse("root@example.com").unwrap();
    let last = services::accounts::set_disabled(&app.services.db, &root, true).await.unwrap_err();
    assert!(last.to_string().contains("root@example.com is the last admin who can sign in"), "{last}");
    assert_eq!(app.rpc(&admin, "admin/accounts/search", &[]).await.status(), StatusCode::OK, "still signed in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let c = client();
    assert_eq!(c.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let ready = c.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_password_guesses_cannot_get_past_the_sign_in_throttle() {
    let app = TestApp::spawn().await;
    let email = format!("guessed-{}@example.com", uuid::Uuid::new_v4().simple());
    app.user(&email, Role::Merchant).await;

    // Twenty wrong guesses at once: five are checked, the others refused before any check.
    let guesses = (0..20).map(|i| {
        let (app, email) = (&app, &email);
        async move { app.login(&client(), email, &format!("wrong guess {i}")).await.status().as_u16() }
    });
    let mut statuses = futures_util::future::join_all(guesses).await;
    statuses.sort_unstable();
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 15, "{statuses:?}");
    assert!(statuses[..5].iter().all(|&s| (400..429).contains(&s)), "{statuses:?}");

    // The right password is refused too until the window has passed, and the answer says when.
    let refused = app.login(&client(), &email, PASSWORD).await;
    assert_eq!(refused.status(), 429);
    let retry_after: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");

    // Trying again while refused does not move the end of the lock.
    let ttl = || async {
        let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
        let ttl: i64 = deadpool_redis::redis::cmd("TTL")
            .arg(format!("{}:login:pair:{email}:127.0.0.1", app.services.namespace))
            .query_async(&mut conn)
            .await
            .unwrap();
        ttl
    };
    let before = ttl().await;
    assert!(before > 0, "the address-and-client count has its window: TTL {before}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.login(&client(), &email, "another wrong guess").await.status(), 429);
    assert!(ttl().await < before, "the lock was extended");

    // The owner signing in from another client is not locked out by these guesses.
    let elsewhere = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let res = app.login(&elsewhere, &email, PASSWORD).await;
    assert!(res.status().is_redirection() || res.status().is_success(), "{}", res.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_functions_refuse_calls_from_another_site() {
    let app = TestApp::spawn().await;
    app.user("ann@example.com", Role::Merchant).await;
    let form = [("email", "ann@example.com"), ("password", PASSWORD)];

    // A page on another site posting the sign-in form (login CSRF): refused, no session.
    let c = client();
    let forged = c.post(app.url("/rpc/auth/login")).header("origin", "http://evil.example").form(&form);
    let res = forged.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get("set-cookie").is_none());
    let res = c.post(app.url("/rpc/keys/list")).header("referer", "https://evil.example/x").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // The app's own pages post with their own origin: fine.
    let origin = app.base.clone();
    let res = client().post(app.url("/rpc/auth/login")).header("origin", origin).form(&form).send().await.unwrap();
    assert!(res.status().is_success() || res.status().is_redirection(), "{}", res.status());
    assert!(res.headers().get("set-cookie").is_some());
}

/// Without JavaScript the sign-in form posts straight to its server function. A failure must come
/// back to the form's page with the message in the URL (leptos' form redirects), not as the
/// server function's JSON; success still lands on the page asked for. The app's own (script)
/// calls keep the error's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_post_without_javascript_returns_to_its_page_with_the_message() {
    let app = TestApp::spawn().await;
    // Failures count towards the sign-in throttle in the shared Redis: an address of this test only.
    let gil = format!("gil-{}@example.com", app.db_name);
    app.user(&gil, Role::Merchant).await;
    let c = client();
    let form_page = app.url("/login?next=/dashboard/notifications");
    let post = |referer: &str, password: &str| {
        c.post(app.url("/rpc/auth/login"))
            .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
            .header("origin", &app.base)
            .header("referer", referer)
            .form(&[("email", gil.as_str()), ("password", password), ("next", "/dashboard/notifications")])
            .send()
    };

    let res = post(&form_page, "not the password").await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    // No session; only the address typed, kept for the sign-in page (not in its URL), briefly.
    let cookies: Vec<&str> = res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    let [kept] = cookies[..] else { panic!("one cookie: {cookies:?}") };
    let expected =
        format!("km_sign_in_email={}; Path=/login; HttpOnly; SameSite=Lax; Max-Age=300", gil.replace('@', "%40"));
    assert_eq!(kept, expected);
    let back = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with(&form_page) && back.contains("__err=") && !back.contains("gil-"), "{back}");
    let kept_cookie = kept.split(';').next().unwrap();
    let page = c.get(&back).header("accept", "text/html").header("cookie", kept_cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // Shown once: the page that shows it forgets it.
    let forgotten =
        page.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(forgotten.iter().any(|c| c.starts_with("km_sign_in_email=;") && c.contains("Max-Age=0")), "{forgotten:?}");
    let html = page.text().await.unwrap();
    assert!(html.contains("data-testid=\"login-error\"") && html.contains("Invalid email or password"), "{html}");
    assert!(html.contains(&format!("value=\"{gil}\"")), "the email typed is in its field");

    // Signing in from that page (its URL still carries the error) goes where `next` says.
    let res = post(&back, PASSWORD).await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "/dashboard/notifications");
    assert!(res.headers().get("set-cookie").is_some());

    // The app's script calls (they accept JSON) get the status and the message as before.
    let res = client()
        .post(app.url("/rpc/auth/login"))
        .header("accept", "application/json")
        .header("referer", &form_page)
        .form(&[("email", gil.as_str()), ("password", "wrong again")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid email or password.");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_checks_the_current_one_and_signs_out_every_other_session() {
    let app = TestApp::spawn().await;
    let email = format!("fay-{}@example.com", app.db_name);
    app.user(&email, Role::Merchant).await;
    let here = app.signed_in(&email).await;
    let elsewhere = app.signed_in(&email).await;
    let new = "a brand new passphrase";
    // Refused, each naming its field, and nothing changes.
    for (current, new_password, confirm, field) in [
        ("not the password", new, new, "current_password"),
        (PASSWORD, "short", "short", "new_password"),
        (PASSWORD, new, "a brand new passphrasE", "confirm_password"),
        (PASSWORD, PASSWORD, PASSWORD, "new_password"),
    ] {
        let res = change_password(&app, &here, current, new_password, confirm).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(app.rpc(&elsewhere, "keys/list", &[]).await.status(), StatusCode::OK);
    assert!(app.login(&client(), &email, PASSWORD).await.status().is_redirection());
    // Signed out, nobody changes it.
    let res = change_password(&app, &client(), PASSWORD, new, new).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let told = format!(
        "SELECT count(*) FROM outbound_emails WHERE to_address = '{email}' \
         AND subject = 'Your keymeter password was changed' AND text_body LIKE '%someone knows your password%'"
    );
    assert_eq!(app.count(&told).await, 0, "refusals tell nobody");

    let tokens = format!(
        "SELECT encode(token_hash, 'hex') AS t FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = '{email}'"
    );
    let before = app.texts(&tokens).await;
    assert_eq!(before.len(), 3);
    let res = change_password(&app, &here, PASSWORD, new, new).await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = app.texts(&tokens).await;
    assert_eq!(after.len(), 1);
    assert!(!before.contains(&after[0]), "this session goes on under a new token");
    // Both other sessions (the one above and the check's sign-in) ended.
    assert_eq!(res.json::<usize>().await.unwrap(), 2);
    assert_eq!(app.rpc(&here, "keys/list", &[]).await.status(), StatusCode::OK, "this browser stays signed in");
    assert_eq!(app.rpc(&elsewhere, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login(&client(), &email, PASSWORD).await.status(), StatusCode::BAD_REQUEST);
    assert!(app.login(&client(), &email, new).await.status().is_redirection());
    // Its owner hears of it by email and in the bell: whoever changed it may not have been them.
    assert_eq!(app.count(&told).await, 1);
    let bell: Vec<serde_json::Value> = app.rpc(&here, "notifications/list", &[]).await.json().await.unwrap();
    assert!(bell.iter().any(|n| n["title"] == "Your keymeter password was changed"), "{bell:?}");
}

/// Without JavaScript the password form posts straight to its server function: a change comes
/// back to the account page saying it was made (and a refusal with its message, as every form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_without_javascript_is_confirmed_on_the_account_page() {
    let app = TestApp::spawn().await;
    let email = format!("gus-{}@example.com", app.db_name);
    app.user(&email, Role::Merchant).await;
    let browser = app.signed_in(&email).await;
    let _elsewhere = app.signed_in(&email).await;
    let account = app.url("/dashboard/account");
    let new = "a brand new passphrase";
    let post = |current: &'static str| {
        browser
            .post(app.url("/rpc/auth/password"))
            .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
            .header("origin", &app.base)
            .header("referer", &account)
            .form(&[("current_password", current), ("new_password", new), ("confirm_password", new)])
            .send()
    };
    let page_text = |location: String| {
        let browser = browser.clone();
        let url = if location.starts_with('/') { app.url(&location) } else { location };
        async move {
            let page = browser.get(url).header("accept", "text/html").send().await.unwrap();
            assert_eq!(page.status(), StatusCode::OK);
            page.text().await.unwrap()
        }
    };

    let refused = post("not the password").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FOUND);
    let html = page_text(refused.headers()["location"].to_str().unwrap().to_owned()).await;
    assert!(html.contains("That is not your current password."), "{html}");
    assert!(!html.contains("Password changed"), "{html}");

    let changed = post(PASSWORD).await.unwrap();
    assert_eq!(changed.status(), StatusCode::FOUND);
    let location = changed.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/dashboard/account?password_changed=1", "one other session ended");
    // The browser that changed it follows the redirect under its new session.
    let html = page_text(location).await;
    assert!(html.contains("Password changed. Your other sessions were signed out."), "{html}");
    assert!(app.login(&client(), &email, new).await.status().is_redirection());
}

/// Checking the current password counts as a sign-in attempt: a session left open cannot be
/// used to guess it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_current_password_is_throttled_like_signing_in() {
    let app = TestApp::spawn().await;
    let email = format!("gus-{}@example.com", app.db_name);
    app.user(&email, Role::Merchant).await;
    let session = app.signed_in(&email).await;
    let new = "a brand new passphrase";
    for _ in 0..5 {
        assert_eq!(
            change_password(&app, &session, "guess guess guess", new, new).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(
        change_password(&app, &session, PASSWORD, new, new).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right one, for a while"
    );
    assert_eq!(app.login(&client(), &email, PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn change_password(
    app: &TestApp,
    session: &reqwest::Client,
    current: &str,
    new: &str,
    confirm: &str,
) -> reqwest::Response {
    let args = [("current_password", current), ("new_password", new), ("confirm_password", confirm)];
    app.rpc(session, "auth/password", &args).await
}

/// Attempts refused because the client is over its allowance leave nothing behind in Redis:
/// made-up addresses must not each keep counts there for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sign_ins_at_made_up_addresses_leave_no_counts_behind() {
    let app = TestApp::spawn().await;
    let ns = &app.services.namespace;
    let client_count = format!("{ns}:login:client:127.0.0.1");
    let mut conn = services::redis_pool::conn(&app.services.redis).await.unwrap();
    let redis = |cmd: &str, args: &[&str]| {
        let mut c = deadpool_redis::redis::cmd(cmd);
        for a in args {
            c.arg(*a);
        }
        c
    };
    // This client has used up its allowance (100 failures in the window).
    let _: () = redis("SET", &[&client_count, "100", "EX", "900"]).query_async(&mut conn).await.unwrap();
    let tag = app.db_name.clone();
    for i in 0..20 {
        let res = app.login(&client(), &format!("made-up-{i}-{tag}@example.com"), "guess guess guess").await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let left: Vec<String> =
        redis("KEYS", &[&format!("{ns}:login:*made-up-*-{tag}@example.com*")]).query_async(&mut conn).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let count: i64 = redis("GET", &[&client_count]).query_async(&mut conn).await.unwrap();
    assert_eq!(count, 100, "refused attempts are given back");
    let _: () = redis("DEL", &[&client_count]).query_async(&mut conn).await.unwrap();
}

/// Sign-ins with a malformed address are failed sign-ins like any other: throttled, not an
/// endless stream of refusals (each of which is logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_are_throttled_like_wrong_passwords() {
    let app = TestApp::spawn().await;
    let malformed = format!("{}-not an address", "x".repeat(200));
    for _ in 0..5 {
        assert_eq!(app.login(&client(), &malformed, "guess guess guess").await.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.login(&client(), &malformed, "guess guess guess").await.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The tokens of the reset links mailed to `email`, as its owner reads them (the mail folder:
/// the stored message's text is erased once sent), waiting up to 15 s for `n` of them.
async fn reset_links(app: &TestApp, email: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&app.config.mail_dir).into_iter().flatten().flatten() {
            // Quoted-printable: long lines are broken with a trailing `=`.
            let text =
                std::fs::read_to_string(entry.path()).unwrap_or_default().replace("\r\n", "\n").replace("=\n", "");
            if text.contains(&format!("To: {email}")) && text.contains("Subject: Choose a new keymeter password") {
                let at = text.find("/password-reset/").expect("a link") + "/password-reset/".len();
                found.push(text[at..at + 64].to_owned());
            }
        }
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn ask_reset(app: &TestApp, email: &str) -> reqwest::Response {
    app.rpc(&client(), "auth/password-reset/ask", &[("email", email)]).await
}

async fn choose_password(app: &TestApp, token: &str, new: &str, confirm: &str) -> reqwest::Response {
    let args = [("token", token), ("new_password", new), ("confirm_password", confirm)];
    app.rpc(&client(), "auth/password-reset/choose", &args).await
}

/// Someone who forgot their password asks for a link on the sign-in page, and the link sets a
/// new one, once: every session ends, a sign-in lockout of the address is lifted, the owner is
/// told, and neither the admins' mail page nor the database keeps a link that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_password_is_replaced_through_a_mailed_link_once() {
    let app = TestApp::spawn().await;
    let email = format!("hal-{}@example.com", app.db_name);
    app.user(&email, Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;
    let admin = app.signed_in("root@example.com").await;
    let session = app.signed_in(&email).await;
    // Someone guessed at the address: even the right password is refused for a while.
    for _ in 0..5 {
        assert_eq!(app.login(&client(), &email, "guess guess guess").await.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(app.login(&client(), &email, PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);

    assert_eq!(ask_reset(&app, &email.to_uppercase()).await.status(), StatusCode::OK);
    let links = reset_links(&app, &email, 1).await;
    assert_eq!(links.len(), 1);
    let token = &links[0];
    let link_page = app.page(&client(), &format!("/password-reset/{token}")).await;
    assert_eq!(link_page.status(), StatusCode::OK);
    let html = link_page.text().await.unwrap();
    assert!(html.contains("ha***@example.com") && !html.contains(&email), "the address, partly hidden: {html}");
    // Sent: the stored message keeps no link, and the admins' mail page shows none.
    app.wait_until_mail_sent().await;
    let stored = app
        .texts(&format!("SELECT text_body || html_body AS t FROM outbound_emails WHERE to_address = '{email}'"))
        .await;
    assert!(stored.iter().all(|m| !m.contains(token.as_str())), "{stored:?}");
    let id = app.count(&format!("SELECT max(id) FROM outbound_emails WHERE to_address = '{email}'")).await.to_string();
    let shown: serde_json::Value = app.rpc(&admin, "admin/mail/body", &[("id", &id)]).await.json().await.unwrap();
    assert!(shown["text"].as_str().unwrap().contains("not shown"), "{shown}");

    let new = "a brand new passphrase";
    for (new_password, confirm, field) in
        [("short", "short", "new_password"), (new, "something else", "confirm_password")]
    {
        let res = choose_password(&app, token, new_password, confirm).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), StatusCode::OK, "refusals changed nothing");

    let chosen = choose_password(&app, token, new, new).await;
    assert!(chosen.status().is_success() || chosen.status().is_redirection(), "{}", chosen.status());
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), StatusCode::UNAUTHORIZED, "sessions ended");
    assert_eq!(app.login(&client(), &email, PASSWORD).await.status(), StatusCode::BAD_REQUEST);
    assert!(app.login(&client(), &email, new).await.status().is_redirection(), "the lockout was lifted");
    let told = format!(
        "SELECT count(*) FROM outbound_emails WHERE to_address = '{email}' AND subject = 'Your keymeter password was changed'"
    );
    assert_eq!(app.count(&told).await, 1);

    // Used: it sets nothing again, and its page says so.
    let again = choose_password(&app, token, "yet another passphrase", "yet another passphrase").await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(again.text().await.unwrap().contains("expired or was used already"));
    assert!(app.login(&client(), &email, new).await.status().is_redirection());
    let html = app.page(&client(), &format!("/password-reset/{token}")).await.text().await.unwrap();
    assert!(html.contains("expired or was used already") && !html.contains("ha***@"), "{html}");
}

/// Asking answers the same for any address, so the form tells nobody who has an account; an
/// address gets at most three links an hour and ten a day, a client twenty asks an hour; a link
/// stops working when it expires, when the password is changed otherwise, or when the account
/// is disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_link_reveals_nothing_and_floods_no_inbox() {
    use services::accounts::password_reset::{send_link, Asked};
    use services::accounts::Email;
    let app = TestApp::spawn().await;
    app.user("ivy@example.com", Role::Merchant).await;
    app.user("jon@example.com", Role::Merchant).await;
    app.user("kim@example.com", Role::Merchant).await;
    app.user("root@example.com", Role::Admin).await;

    let unknown = ask_reset(&app, "nobody@example.com").await;
    let known = ask_reset(&app, "ivy@example.com").await;
    assert_eq!((unknown.status(), known.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(unknown.text().await.unwrap(), known.text().await.unwrap());
    assert_eq!(reset_links(&app, "ivy@example.com", 1).await.len(), 1);
    assert!(reset_links(&app, "nobody@example.com", 0).await.is_empty());
    let malformed = ask_reset(&app, "not an address").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json::<serde_json::Value>().await.unwrap()["error"]["field"], "email");

    // The limits, on the work the answer leaves behind.
    let ivy = Email::parse("ivy@example.com").unwrap();
    let from = "198.51.100.7";
    assert_eq!(send_link(&app.services, &ivy, from).await.unwrap(), Asked::Sent);
    assert_eq!(send_link(&app.services, &ivy, from).await.unwrap(), Asked::Sent);
    assert_eq!(send_link(&app.services, &ivy, from).await.unwrap(), Asked::TooMany, "three links an hour");
    let nobody = Email::parse("nobody@example.com").unwrap();
    assert_eq!(send_link(&app.services, &nobody, from).await.unwrap(), Asked::NoAccount);
    // Past the hour, ten a day: seven more from earlier today make ten.
    app.run_sql("UPDATE password_resets SET created_at = created_at - interval '2 hours'").await;
    app.run_sql(
        "INSERT INTO password_resets (token_hash, user_id, created_at, expires_at) \
         SELECT sha256(random()::text::bytea), id, now() - interval '3 hours', now() - interval '2 hours' \
         FROM users, generate_series(1, 7) WHERE email = 'ivy@example.com'",
    )
    .await;
    assert_eq!(send_link(&app.services, &ivy, from).await.unwrap(), Asked::TooMany, "ten links a day");
    // One client, twenty asks an hour whatever the addresses.
    for i in 0..15 {
        let someone = Email::parse(&format!("someone-{i}@example.com")).unwrap();
        assert_eq!(send_link(&app.services, &someone, from).await.unwrap(), Asked::NoAccount);
    }
    let jon = Email::parse("jon@example.com").unwrap();
    assert_eq!(send_link(&app.services, &jon, from).await.unwrap(), Asked::TooMany, "the client's twenty asks");
    assert_eq!(send_link(&app.services, &jon, "198.51.100.8").await.unwrap(), Asked::Sent);

    // Each link works until it expires.
    let ivys = reset_links(&app, "ivy@example.com", 3).await;
    assert_eq!(ivys.len(), 3);
    app.run_sql(
        "UPDATE password_resets SET expires_at = now() - interval '1 second' \
         WHERE user_id = (SELECT id FROM users WHERE email = 'ivy@example.com')",
    )
    .await;
    let expired = choose_password(&app, &ivys[0], "a brand new passphrase", "a brand new passphrase").await;
    assert_eq!(expired.status(), StatusCode::BAD_REQUEST);
    assert!(app.login(&client(), "ivy@example.com", PASSWORD).await.status().is_redirection());

    // A password changed on the account page voids the links not used yet.
    assert_eq!(ask_reset(&app, "kim@example.com").await.status(), StatusCode::OK);
    let kims = reset_links(&app, "kim@example.com", 1).await;
    let kim = app.signed_in("kim@example.com").await;
    let changed = change_password(&app, &kim, PASSWORD, "kim's own new passphrase", "kim's own new passphrase").await;
    assert_eq!(changed.status(), StatusCode::OK);
    let voided = choose_password(&app, &kims[0], "a brand new passphrase", "a brand new passphrase").await;
    assert_eq!(voided.status(), StatusCode::BAD_REQUEST);
    assert!(app.login(&client(), "kim@example.com", "kim's own new passphrase").await.status().is_redirection());

    // A link mailed before the account was disabled does not work once it is enabled again, and
    // a disabled account gets none.
    let before = reset_links(&app, "jon@example.com", 1).await;
    let admin = app.signed_in("root@example.com").await;
    for disable in [Some("on"), None] {
        let mut args = vec![("email", "jon@example.com")];
        args.extend(disable.map(|d| ("disable", d)));
        assert_eq!(app.rpc(&admin, "admin/accounts/switch", &args).await.status(), StatusCode::OK);
        if disable.is_some() {
            assert_eq!(send_link(&app.services, &jon, "198.51.100.9").await.unwrap(), Asked::Disabled);
        }
    }
    let refused = choose_password(&app, &before[0], "a brand new passphrase", "a brand new passphrase").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(app.login(&client(), "jon@example.com", PASSWORD).await.status().is_redirection());
    // Links that were never mailed are refused the same way, well-formed or not.
    for made_up in ["not-a-token", &"ab".repeat(32)] {
        let res = choose_password(&app, made_up, "a brand new passphrase", "a brand new passphrase").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{made_up}");
    }
}
