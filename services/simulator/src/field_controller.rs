//! The simulator's side of a controller session, for lighting's controller and water's valve
//! controller alike: open the session, say hello, answer each instruction with its result after
//! the delay the field takes, and open it again a second after it ends, until shutdown. (The
//! service's side is `runtime::controller::session`.)

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs sessions until `shutdown`. `open` opens one with the stream of what the controller sends
/// (a tonic client call); `answer` takes an instruction and says how long the field takes to carry
/// it out, and what it does at the end of that time (apply it, if not done at once) and reports.
pub async fn run<Out, In, Open, Opened>(
    name: &str,
    hello: impl Fn() -> Out,
    mut open: Open,
    mut answer: impl FnMut(In) -> (Duration, Box<dyn FnOnce() -> Out + Send>),
    shutdown: CancellationToken,
) where
    Open: FnMut(tokio_stream::wrappers::ReceiverStream<Out>) -> Opened,
    Opened: Future<Output = Result<tonic::Response<tonic::Streaming<In>>, tonic::Status>>,
{
    let pause = || async {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => true,
            _ = shutdown.cancelled() => false,
        }
    };
    loop {
        let (to_service, outbound) = tokio::sync::mpsc::channel::<Out>(64);
        if to_service.send(hello()).await.is_err() {
            return;
        }
        let mut instructions = tokio::select! {
            opened = open(tokio_stream::wrappers::ReceiverStream::new(outbound)) => match opened {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    tracing::warn!(message = status.message(), "{name} session refused; retrying");
                    if pause().await { continue } else { return }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        tracing::info!("{name} session open");
        loop {
            let instruction = tokio::select! {
                m = instructions.message() => m,
                _ = shutdown.cancelled() => return,
            };
            match instruction {
                Ok(Some(instruction)) => {
                    let (delay, done) = answer(instruction);
                    tokio::time::sleep(delay).await;
                    if to_service.send(done()).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(message = status.message(), "{name} session ended");
                    break;
                }
            }
        }
        if !pause().await {
            return;
        }
    }
}
