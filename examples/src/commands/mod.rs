//! The CLI commands that talk to a running daemon.

mod exec;
mod info;
mod mesh;
mod pair;
mod pubsub;
mod rpc;

use crate::{
    cli::{Cli, ClientCommand, Command},
    client::Client,
    daemon,
};

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    let command = match command {
        Command::Run(args) => return daemon::run(&global, args).await,
        Command::Client(command) => command,
    };
    let client = Client::connect(&global).await?;
    match command {
        ClientCommand::Mesh(command) => mesh::run(&client, command).await,
        ClientCommand::Peers(args) => info::peers(&client, args).await,
        ClientCommand::Status(flag) => info::status(&client, flag.json).await,
        ClientCommand::Nearby(flag) => pair::nearby(&client, flag.json).await,
        ClientCommand::Pair(args) => pair::pair(&client, args).await,
        ClientCommand::Pub(args) => pubsub::publish(&client, args).await,
        ClientCommand::Sub(args) => pubsub::subscribe(&client, args).await,
        ClientCommand::Call(args) => rpc::call(&client, args).await,
        ClientCommand::Reply(args) => rpc::reply(&client, args).await,
    }
}
