//! Moving histories into the store (`waymark store import`): each run's records are copied byte
//! for byte (the codec's frames, hash chain included), with a run row owned by no daemon and a
//! lease already expired, so that a daemon takes an imported open run over at its next scan and
//! resumes it as recovery does.

use uuid::Uuid;
use waymark_engine::event::RunId;
use waymark_engine::log;

use super::PgBackend;

/// What importing one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Its records were written.
    Written,
    /// The store already has a run of that id: nothing was written.
    AlreadyThere,
}

impl PgBackend {
    /// Writes `records` (a run's whole history as stored: sequence numbers from 0, in order, the
    /// codec's bytes) as run `run` in one transaction, open or not; owned by no daemon, lease
    /// expired. A run the store already has is left alone ([`Imported::AlreadyThere`]).
    pub fn import_run(
        &self,
        run: RunId,
        records: Vec<(u64, Vec<u8>)>,
        open: bool,
    ) -> Result<Imported, log::Error> {
        let Some(last) = records.last().map(|(seq, _)| *seq) else {
            return Err(log::Error::UnknownRun(run));
        };
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        self.call(move |c| async move {
            let mut guard = c.writer().await?;
            let w = guard.as_mut().expect("writer connected");
            let tx = w
                .client
                .transaction()
                .await
                .map_err(|e| c.storage("starting an import", &e))?;
            let inserted = tx
                .execute(
                    "INSERT INTO waymark_runs (run, open, last_seq, owner, epoch, lease_expires_at) \
                     VALUES ($1, $2, $3, NULL, 0, now()) ON CONFLICT (run) DO NOTHING",
                    &[&run.0, &open, &last],
                )
                .await
                .map_err(|e| c.storage("importing a run's row", &e))?;
            if inserted == 0 {
                return Ok(Imported::AlreadyThere);
            }
            let runs: Vec<Uuid> = vec![run.0; records.len()];
            let seqs: Vec<i64> = records
                .iter()
                .map(|(s, _)| i64::try_from(*s).unwrap_or(i64::MAX))
                .collect();
            let bytes: Vec<&[u8]> = records.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "INSERT INTO waymark_records (run, seq, bytes) \
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[])",
                &[&runs, &seqs, &bytes],
            )
            .await
            .map_err(|e| c.storage("importing a run's records", &e))?;
            tx.commit()
                .await
                .map_err(|e| c.storage("committing an import", &e))?;
            Ok(Imported::Written)
        })
    }
}
