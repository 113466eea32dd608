//! The PostgreSQL test harness itself: a real server starts, gives each test its own database,
//! stops (and is then unreachable) and starts again on the same data.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::postgres::PostgresServer;
use sqlx::{Connection, PgConnection, Row};

async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url).await
}

#[tokio::test]
async fn a_server_gives_databases_that_survive_a_restart() {
    let server = PostgresServer::start();
    assert_eq!(
        server.url(),
        format!("postgres://mcp@127.0.0.1:{}/postgres", server.port())
    );

    let first = server.create_database("harness_first");
    let second = server.create_database("harness_second");
    assert!(first.ends_with("/harness_first"), "{first}");
    assert!(second.ends_with("/harness_second"), "{second}");

    for url in [&server.url(), &first, &second] {
        let mut connection = connect(url).await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(one, 1, "{url}");
        connection.close().await.unwrap();
    }

    // The databases are separate: a table made in one is not in the other.
    let mut connection = connect(&first).await.unwrap();
    sqlx::query("CREATE TABLE kept (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (1, 'before the stop')")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    let mut other = connect(&second).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'kept'")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(
        tables, 0,
        "the second database does not see the first's table"
    );
    other.close().await.unwrap();

    server.stop();
    let refused = connect(&first).await;
    assert!(refused.is_err(), "a stopped server refuses connections");

    server.start_again();
    let mut connection = connect(&first).await.expect("the server is back");
    let row = sqlx::query("SELECT id, name FROM kept")
        .fetch_one(&mut connection)
        .await
        .expect("the table made before the stop is still there");
    assert_eq!(row.get::<i32, _>("id"), 1);
    assert_eq!(row.get::<String, _>("name"), "before the stop");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn servers_run_side_by_side() {
    let one = PostgresServer::start();
    let two = PostgresServer::start();
    assert_ne!(one.port(), two.port());
    for server in [&one, &two] {
        let mut connection = connect(&server.create_database("side_by_side"))
            .await
            .unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
}

#[test]
fn dropping_a_server_stops_it_and_removes_its_folder() {
    let server = PostgresServer::start();
    let data = server.data_dir();
    // The server's process id: the first line of postmaster.pid.
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    assert!(running(&pid), "the server runs");
    drop(server);
    assert!(!data.exists(), "the folder is removed");
    // pg_ctl returns once postmaster.pid is gone, which the server removes just before it
    // exits (and is reaped): wait for the process to go, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!running(&pid), "the server process {pid} has exited");
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        // The state follows the command name in parentheses, which may itself hold spaces.
        .is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
}
