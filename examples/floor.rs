//! The benchmark's floor: bare poem (no OpenAPI layer, no middleware, no
//! application state) serving `GET /tests/hello` with the same JSON body and
//! content type as allot, on the same runtime and release profile. `bench/run`
//! runs it interleaved with allot and reports allot's throughput and CPU per
//! request as ratios of this.
//!
//! `cargo run --release --example floor -- PORT` serves on 127.0.0.1:PORT.

use poem::listener::TcpListener;
use poem::web::Json;
use poem::{Route, Server, get, handler};
use serde::Serialize;

#[derive(Serialize)]
struct Greeting {
    #[serde(rename = "Hello")]
    hello: &'static str,
}

#[handler]
fn hello() -> Json<Greeting> {
    Json(Greeting { hello: "World!" })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8081".to_owned());
    Server::new(TcpListener::bind(format!("127.0.0.1:{port}")))
        .run(Route::new().at("/tests/hello", get(hello)))
        .await
}
