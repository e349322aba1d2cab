//! Reading CSV: a header row, then one record per row. Each looked-up path is found in the
//! header by its dotted path or, failing that, by its column's name; an empty field is a
//! missing value. A row of the wrong length is rejected; a file whose header names no
//! timestamp column is broken.

use std::borrow::Cow;

use crate::Reader;
use crate::convert::Raw;
use crate::sink::BatchSink;

impl Reader {
    pub(crate) fn read_csv(&self, bytes: &[u8], sink: &mut BatchSink) -> Option<String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes);
        let headers = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => return Some(format!("unreadable CSV header: {e}")),
        };
        let header_names: Vec<Cow<'_, str>> = headers.iter().map(String::from_utf8_lossy).collect();
        let find = |path: &str, name: &str| {
            header_names
                .iter()
                .position(|h| h == path)
                .or_else(|| header_names.iter().position(|h| h == name))
        };
        // For each looked-up path, the CSV field that holds it.
        let mut fields: Vec<Option<usize>> = Vec::with_capacity(self.paths.len());
        fields.push(find(&self.paths[0], dfp_core::schema::TIMESTAMP));
        if fields[0].is_none() {
            let json = matches!(bytes.trim_ascii_start().first(), Some(b'[' | b'{'));
            return Some(format!(
                "the CSV header names no timestamp column (`{}` or `{}`){}",
                self.paths[0],
                dfp_core::schema::TIMESTAMP,
                if json {
                    "; the file looks like JSON: read it as json or jsonl (or auto)"
                } else {
                    ""
                }
            ));
        }
        fields.push(find(&self.paths[1], dfp_core::schema::USERNAME));
        fields.push(find(&self.paths[2], dfp_core::schema::EVENT_ID));
        for (c, range) in self.schema.columns.iter().zip(&self.column_paths) {
            let single = range.len() == 1;
            for p in &self.paths[range.clone()] {
                fields.push(find(p, if single { &c.name } else { p }));
            }
        }
        let mut record = csv::ByteRecord::new();
        let mut index = 0;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => return None,
                Ok(true) => {
                    sink.records += 1;
                    let raw = || {
                        record
                            .iter()
                            .map(String::from_utf8_lossy)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let mut raws = Vec::with_capacity(fields.len());
                    let mut bad_utf8 = None;
                    for (k, f) in fields.iter().enumerate() {
                        let value = match f.and_then(|i| record.get(i)) {
                            None | Some(b"") => Raw::Missing,
                            Some(v) => match std::str::from_utf8(v) {
                                Ok(s) => Raw::Str(Cow::Borrowed(s)),
                                Err(_) => {
                                    bad_utf8 = Some(k);
                                    Raw::Missing
                                }
                            },
                        };
                        raws.push(value);
                    }
                    let outcome = match bad_utf8 {
                        Some(k) => Err(format!("field `{}`: invalid UTF-8", self.paths[k])),
                        None => sink.push(self, &raws),
                    };
                    if let Err(reason) = outcome {
                        sink.reject(index, reason, raw());
                    }
                }
                Err(e) => {
                    if matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                        sink.records += 1;
                        sink.reject(index, format!("malformed CSV row: {e}"), String::new());
                    } else {
                        return Some(format!("unreadable CSV after row {index}: {e}"));
                    }
                }
            }
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::InputFormat;
    use crate::tests::{reader, strings};

    #[test]
    fn csv_reads_by_dotted_path_or_column_name() {
        let text = "time,properties.userPrincipalName,event_id,appDisplayName,properties.location.city,properties.location.countryOrRegion\n\
                    2022-08-01T00:00:00Z,a@x.com,e1,Teams,Paris,FR\n\
                    2022-08-01T00:01:00Z,,e2,,Paris,\n\
                    not-a-time,b@x.com,e3,Teams,Paris,FR\n\
                    2022-08-01T00:02:00Z,b@x.com\n";
        let r = reader("azure").read_bytes(Path::new("l.csv"), text.as_bytes(), InputFormat::Auto);
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert_eq!(r.batch.num_rows(), 2);
        // A record without a user is Morpheus' user "nan".
        assert_eq!(
            strings(&r.batch, "username"),
            [Some("a@x.com".into()), Some("nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "appDisplayName"),
            [Some("Teams".into()), Some("nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "location"),
            [Some("Paris, FR".into()), Some("Paris, nan".into())]
        );
        assert_eq!(
            strings(&r.batch, "clientAppUsed"),
            [Some("nan".into()), Some("nan".into())]
        );
        let idx: Vec<usize> = r.rejected.iter().map(|x| x.record).collect();
        assert_eq!(idx, [2, 3]);
        assert!(r.rejected[1].reason.contains("malformed CSV row"));
    }
}
