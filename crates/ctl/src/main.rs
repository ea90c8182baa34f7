//! `lockgatectl`: operate a lockgate broker through its management HTTP API.
//!
//! Every command is one or a few API calls; what is printed is a table (default) or the API's
//! JSON (`--format json`). Exit codes, for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the broker refused the request (e.g. 400 inequivalent declaration), or bad input |
//! | 2 | usage error (unknown command or flag) |
//! | 3 | the management API cannot be reached |
//! | 4 | authentication failed or the user may not do this (401 / 403) |
//! | 5 | the object does not exist (404) |
//! | 6 | `status`: the broker answers but is not healthy (an alarm is in effect) |
//!
//! Errors go to stderr as one line `lockgatectl: error: ...`.

mod client;
mod table;

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::{Client, Failure};

/// lockgatectl: list, declare, delete, purge, export and import on a lockgate broker.
#[derive(Debug, Parser)]
#[command(name = "lockgatectl", version, about)]
struct Cli {
    /// Management API base URL.
    #[arg(long, env = "LOCKGATE_URL", default_value = "http://127.0.0.1:15672")]
    url: String,
    /// User (tagged administrator, or monitoring for read-only commands).
    #[arg(long, short = 'u', env = "LOCKGATE_USER", default_value = "guest")]
    user: String,
    /// Password.
    #[arg(long, short = 'p', env = "LOCKGATE_PASSWORD", default_value = "guest")]
    password: String,
    /// Virtual host for commands that act on one.
    #[arg(long = "vhost", global = true, default_value = "/")]
    vhost: String,
    /// Output format.
    #[arg(long, short = 'f', global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Broker status: version, totals, rates, alarms (exit 6 when an alarm is in effect).
    Status,
    /// List objects in --vhost (default "/"), or in every vhost with --all-vhosts.
    List {
        /// What to list.
        #[arg(value_enum)]
        what: ListWhat,
        /// List across every vhost.
        #[arg(long)]
        all_vhosts: bool,
    },
    /// Declare a queue, an exchange or a binding.
    Declare {
        #[command(subcommand)]
        what: Declare,
    },
    /// Delete a queue, an exchange or a binding.
    Delete {
        #[command(subcommand)]
        what: Delete,
    },
    /// Drop every ready message of a queue.
    Purge {
        /// Queue name.
        queue: String,
    },
    /// Write the definitions (RabbitMQ format) to FILE, or stdout.
    Export {
        /// Output file; `-` or absent for stdout.
        file: Option<String>,
    },
    /// Import a definitions file (a RabbitMQ `export_definitions` file imports as is).
    Import {
        /// Input file; `-` for stdin.
        file: String,
    },
    /// Close client connections.
    Close {
        #[command(subcommand)]
        what: Close,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ListWhat {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Vhosts,
    Users,
}

#[derive(Debug, Subcommand)]
enum Declare {
    /// A queue (durable unless --durable false).
    Queue {
        /// Queue name.
        name: String,
        #[command(flatten)]
        common: DeclareCommon,
    },
    /// An exchange.
    Exchange {
        /// Exchange name.
        name: String,
        /// direct, fanout, topic or headers.
        #[arg(long = "type", short = 't', default_value = "direct")]
        kind: String,
        /// Internal (no direct publishing).
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        common: DeclareCommon,
    },
    /// A binding from an exchange to a queue or exchange.
    Binding(BindingArgs),
}

#[derive(Debug, Args)]
struct DeclareCommon {
    /// Survives a restart.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,
    /// Deleted when its last consumer (queue) or binding (exchange) goes.
    #[arg(long)]
    auto_delete: bool,
    /// Arguments as a JSON object, e.g. '{"x-max-length": 1000}'.
    #[arg(long, default_value = "{}")]
    arguments: String,
}

#[derive(Debug, Args)]
struct BindingArgs {
    /// Source exchange.
    #[arg(long)]
    source: String,
    /// Destination queue or exchange.
    #[arg(long)]
    destination: String,
    /// queue or exchange.
    #[arg(long, default_value = "queue")]
    destination_type: String,
    /// Binding key.
    #[arg(long, default_value = "")]
    routing_key: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    arguments: String,
}

#[derive(Debug, Subcommand)]
enum Delete {
    /// A queue.
    Queue {
        /// Queue name.
        name: String,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it has no ready messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// An exchange.
    Exchange {
        /// Exchange name.
        name: String,
        /// Only if it has no bindings.
        #[arg(long)]
        if_unused: bool,
    },
    /// Every binding from --source to --destination with --routing-key.
    Binding(BindingArgs),
}

#[derive(Debug, Subcommand)]
enum Close {
    /// One connection, by the name `list connections` shows.
    Connection {
        /// Connection name ("PEER -> LOCAL").
        name: String,
        /// Reason sent to the client in connection.close.
        #[arg(long, default_value = "Closed via lockgatectl")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client::new(&cli.url, &cli.user, &cli.password);
    match run(&cli, &client) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("lockgatectl: error: {}", failure.message);
            ExitCode::from(failure.exit_code)
        }
    }
}

fn seg(text: &str) -> String {
    client::encode_segment(text)
}

fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::input(format!("{what} is not valid JSON: {e}")))
}

fn run(cli: &Cli, client: &Client) -> Result<ExitCode, Failure> {
    let vhost = seg(&cli.vhost);
    let json_out = cli.format == Format::Json;
    match &cli.command {
        Command::Status => {
            let overview = client.get("/api/overview")?;
            let (code, alarms) = client.get_status("/api/health/checks/alarms")?;
            if json_out {
                println!(
                    "{}",
                    pretty(&json!({"overview": overview, "alarms": alarms}))
                );
            } else {
                print!("{}", table::status(&overview, &alarms));
            }
            Ok(if code == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(6)
            })
        }
        Command::List { what, all_vhosts } => {
            let scoped = !*all_vhosts;
            let path = match what {
                ListWhat::Queues if scoped => format!("/api/queues/{vhost}"),
                ListWhat::Queues => "/api/queues".to_owned(),
                ListWhat::Exchanges if scoped => format!("/api/exchanges/{vhost}"),
                ListWhat::Exchanges => "/api/exchanges".to_owned(),
                ListWhat::Bindings if scoped => format!("/api/bindings/{vhost}"),
                ListWhat::Bindings => "/api/bindings".to_owned(),
                ListWhat::Connections if scoped => format!("/api/vhosts/{vhost}/connections"),
                ListWhat::Connections => "/api/connections".to_owned(),
                ListWhat::Channels if scoped => format!("/api/vhosts/{vhost}/channels"),
                ListWhat::Channels => "/api/channels".to_owned(),
                ListWhat::Consumers if scoped => format!("/api/consumers/{vhost}"),
                ListWhat::Consumers => "/api/consumers".to_owned(),
                ListWhat::Vhosts => "/api/vhosts".to_owned(),
                ListWhat::Users => "/api/users".to_owned(),
            };
            let items = client.get(&path)?;
            if json_out {
                println!("{}", pretty(&items));
            } else {
                print!("{}", table::list(*what, &items));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Declare { what } => {
            match what {
                Declare::Queue { name, common } => {
                    let body = json!({
                        "durable": common.durable, "auto_delete": common.auto_delete,
                        "arguments": parse_json(&common.arguments, "--arguments")?,
                    });
                    let code = client.put(&format!("/api/queues/{vhost}/{}", seg(name)), &body)?;
                    report(json_out, code, &format!("queue '{name}'"));
                }
                Declare::Exchange {
                    name,
                    kind,
                    internal,
                    common,
                } => {
                    let body = json!({
                        "type": kind, "durable": common.durable, "auto_delete": common.auto_delete,
                        "internal": internal,
                        "arguments": parse_json(&common.arguments, "--arguments")?,
                    });
                    let code =
                        client.put(&format!("/api/exchanges/{vhost}/{}", seg(name)), &body)?;
                    report(json_out, code, &format!("exchange '{name}'"));
                }
                Declare::Binding(b) => {
                    let body = json!({
                        "routing_key": b.routing_key,
                        "arguments": parse_json(&b.arguments, "--arguments")?,
                    });
                    client.post(&binding_path(&vhost, b)?, &body)?;
                    report(
                        json_out,
                        201,
                        &format!(
                            "binding {} -> {} ({})",
                            b.source, b.destination, b.routing_key
                        ),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { what } => {
            match what {
                Delete::Queue {
                    name,
                    if_unused,
                    if_empty,
                } => {
                    client.delete(&format!(
                        "/api/queues/{vhost}/{}?if-unused={if_unused}&if-empty={if_empty}",
                        seg(name)
                    ))?;
                    done(json_out, &format!("deleted queue '{name}'"));
                }
                Delete::Exchange { name, if_unused } => {
                    client.delete(&format!(
                        "/api/exchanges/{vhost}/{}?if-unused={if_unused}",
                        seg(name)
                    ))?;
                    done(json_out, &format!("deleted exchange '{name}'"));
                }
                Delete::Binding(b) => {
                    let path = binding_path(&vhost, b)?;
                    let list = client.get(&path)?;
                    let matching: Vec<&Value> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|x| x["routing_key"] == b.routing_key.as_str())
                        .collect();
                    if matching.is_empty() {
                        return Err(Failure::not_found("no such binding"));
                    }
                    for binding in matching {
                        let props = binding["properties_key"].as_str().unwrap_or("~");
                        client.delete(&format!("{path}/{}", seg(props)))?;
                    }
                    done(
                        json_out,
                        &format!("deleted binding {} -> {}", b.source, b.destination),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge { queue } => {
            client.delete(&format!("/api/queues/{vhost}/{}/contents", seg(queue)))?;
            done(json_out, &format!("purged queue '{queue}'"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { file } => {
            let defs = client.get("/api/definitions")?;
            let text = pretty(&defs);
            match file.as_deref() {
                None | Some("-") => println!("{text}"),
                Some(path) => std::fs::write(path, text + "\n")
                    .map_err(|e| Failure::input(format!("writing {path}: {e}")))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file } => {
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Failure::input(format!("reading stdin: {e}")))?;
                text
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| Failure::input(format!("reading {file}: {e}")))?
            };
            let defs = parse_json(&text, file)?;
            let result = client.post("/api/definitions", &defs)?;
            if json_out {
                println!("{}", pretty(&result));
            } else {
                let imported = &result["imported"];
                println!(
                    "imported: {} vhosts, {} exchanges, {} queues, {} bindings",
                    imported["vhosts"],
                    imported["exchanges"],
                    imported["queues"],
                    imported["bindings"]
                );
                for skipped in result["skipped"].as_array().into_iter().flatten() {
                    println!("skipped: {}", skipped.as_str().unwrap_or_default());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Close {
            what: Close::Connection { name, reason },
        } => {
            client.delete_with_reason(&format!("/api/connections/{}", seg(name)), reason)?;
            done(json_out, &format!("closing connection '{name}'"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn binding_path(vhost: &str, b: &BindingArgs) -> Result<String, Failure> {
    let kind = match b.destination_type.as_str() {
        "queue" | "q" => "q",
        "exchange" | "e" => "e",
        other => {
            return Err(Failure::input(format!(
                "--destination-type must be queue or exchange, got {other}"
            )))
        }
    };
    let source = if b.source.is_empty() {
        "amq.default"
    } else {
        &b.source
    };
    Ok(format!(
        "/api/bindings/{vhost}/e/{}/{kind}/{}",
        seg(source),
        seg(&b.destination)
    ))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn report(json_out: bool, status: u16, what: &str) {
    let verb = if status == 204 { "exists" } else { "declared" };
    if json_out {
        println!("{}", json!({"result": verb, "object": what}));
    } else {
        println!("{verb}: {what}");
    }
}

fn done(json_out: bool, message: &str) {
    if json_out {
        println!("{}", json!({"result": "ok", "message": message}));
    } else {
        println!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn binding_paths_name_the_default_exchange() {
        let args = BindingArgs {
            source: String::new(),
            destination: "q/1".into(),
            destination_type: "queue".into(),
            routing_key: String::new(),
            arguments: "{}".into(),
        };
        assert_eq!(
            binding_path("%2F", &args).unwrap(),
            "/api/bindings/%2F/e/amq.default/q/q%2F1"
        );
    }
}
