//! `hubrelay mailbox --address ADDR`: the listing comes from whichever node of the CMS is active.

use std::io::Write;

use super::{print_json, Failure};
use crate::client::{encode, ClientError};
use crate::config::Site;
use crate::wire::mailbox::MailboxListing;

/// Asks each node of the address's CMS; the active one answers. With `message_id`, prints that
/// message as stored.
pub async fn run(
    site: &Site,
    address: &str,
    message_id: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let route = site.route(address).ok_or_else(|| {
        Failure::Usage(format!(
            "{address} is not a mailbox of any storage group in {}",
            site.file.display()
        ))
    })?;
    let cms = &site.cms[route.cms];
    let client = super::cluster::admin_client(site)?;
    let mut errors = Vec::new();
    for node in &cms.nodes {
        let answer = match message_id {
            Some(id) => {
                let path = format!(
                    "/api/mailbox/message?address={}&message_id={}",
                    encode(address),
                    encode(id)
                );
                client.get_bytes(node.admin, &path).await.map(Answer::Raw)
            }
            None => {
                let path = format!("/api/mailbox?address={}", encode(address));
                client
                    .get::<MailboxListing>(node.admin, &path)
                    .await
                    .map(Answer::Listing)
            }
        };
        match answer {
            Ok(Answer::Listing(listing)) => return print(&listing, json),
            Ok(Answer::Raw(bytes)) => {
                return std::io::stdout()
                    .write_all(&bytes)
                    .map_err(|e| Failure::Failed(e.to_string()));
            }
            Err(e @ ClientError::Status { status: 503, .. })
            | Err(e @ ClientError::Unreachable { .. }) => {
                errors.push(format!("{}: {e}", node.name))
            }
            Err(e) => return Err(Failure::Failed(format!("{}: {e}", node.name))),
        }
    }
    Err(Failure::Failed(format!(
        "no active node of {} answered ({})",
        cms.name,
        errors.join("; ")
    )))
}

enum Answer {
    Listing(MailboxListing),
    Raw(Vec<u8>),
}

fn print(listing: &MailboxListing, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(listing);
    }
    println!(
        "{} on {}: {} message(s)",
        listing.address,
        listing.node,
        listing.messages.len()
    );
    for m in &listing.messages {
        println!("  {}  {:>8} bytes  {}", m.delivered, m.size, m.message_id);
    }
    Ok(())
}
