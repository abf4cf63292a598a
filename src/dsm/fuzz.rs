//! The DSM reply decoder and error mapping as one function of bytes, for
//! the fuzz targets and their corpus test. Only built with the `fuzzing`
//! feature.

use std::collections::HashMap;

use super::api::{self, ApiTable, InfoEntry};
use super::auth::login_error;
use super::error::{Error, code_meaning};
use super::wire::{InfoReply, ListPage, LoginReply, SharePage, TaskStart, TaskStatus, decode};

/// Decodes `data` as every reply shape synback reads and maps failures as
/// the client does.
///
/// # Errors
/// A description of a broken invariant: an error without a message, a DSM
/// failure whose code is lost, or a folder reported with a size.
pub fn reply(data: &[u8]) -> Result<(), String> {
    check(decode::<ListPage>(api::LIST, "list", data).map(|page| {
        for entry in page.files.into_iter().map(|e| e.into_entry()) {
            if entry.is_dir && entry.size.is_some() {
                return Err(format!("folder {:?} with a size", entry.path));
            }
        }
        Ok(())
    }))?;
    check(
        decode::<SharePage>(api::LIST, "list_share", data).map(|page| {
            let _ = page.total;
            page.shares.into_iter().for_each(|e| drop(e.into_entry()));
            Ok(())
        }),
    )?;
    check(
        decode::<InfoReply>(api::LIST, "getinfo", data).map(|reply| {
            for info in reply.files.into_iter().map(|e| e.into_info()) {
                if info.exists() == info.code.is_some() {
                    return Err(format!("getinfo {:?}: entry and code disagree", info.path));
                }
            }
            Ok(())
        }),
    )?;
    check(decode::<TaskStart>(api::MD5, "start", data).map(|t| {
        drop(t.id());
        Ok(())
    }))?;
    check(decode::<TaskStatus>(api::MD5, "status", data).map(|_| Ok(())))?;
    check(
        decode::<HashMap<String, InfoEntry>>(api::INFO, "query", data).map(|offered| {
            let table = ApiTable::choose(&offered);
            drop(table.versions());
            Ok(())
        }),
    )?;
    let login = decode::<LoginReply>(api::AUTH, "login", data).map_err(|e| login_error("fuzz", e));
    if let Err(Error::Api { code, .. }) = &login
        && (400..=410).contains(code)
    {
        return Err(format!("login code {code} not mapped to a login error"));
    }
    check(login.map(|_| Ok(())))
}

fn check(result: Result<Result<(), String>, Error>) -> Result<(), String> {
    match result {
        Ok(inner) => inner,
        Err(err) => {
            let text = crate::error_chain(&err);
            if text.is_empty() || format!("{err:?}").is_empty() {
                return Err("an error without a message".into());
            }
            if let Error::Api { api, code, .. } = &err
                && (err.dsm_code() != Some(*code) || code_meaning(api, *code).is_empty())
            {
                return Err(format!("DSM code {code} lost or without meaning"));
            }
            let _ = (
                err.is_transient(),
                err.is_session_lost(),
                err.is_not_found(),
            );
            Ok(())
        }
    }
}
