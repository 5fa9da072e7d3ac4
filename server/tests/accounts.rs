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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_slowed_down() {
    let app = TestApp::spawn().await;
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
    let admin_rpc = app.rpc(&merchant, "admin/keys", &[]).await;
    assert_eq!(admin_rpc.status(), StatusCode::FORBIDDEN);

    let admin = app.signed_in("root@example.com").await;
    assert_eq!(app.page(&admin, "/admin").await.status(), StatusCode::OK);
    assert_eq!(app.rpc(&admin, "admin/keys", &[]).await.status(), StatusCode::OK);
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
