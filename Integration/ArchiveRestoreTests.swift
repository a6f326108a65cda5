import ArchiveCrypto
import Foundation
import ObjectStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A new DR host from the bucket alone: `walship restore --archive` without a spool, against a real Ceph RADOS
/// Gateway, an encrypted archive of a pgbench load; the server's restore_command works in its own environment
/// (credentials and keyring from files its OS user reads) and replays from the prefetch cache.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveRestoreTests {
    @Test func aCopyFromTheBucketAloneEqualsThePrimaryAndStopsAtATime() async throws {
        // The servers below start from this process's environment: without the store's credentials in it, only
        // the files restore_command names can open the store.
        #expect(ProcessInfo.processInfo.environment["AWS_SECRET_ACCESS_KEY"] == nil)
        let fixture = try Fixture("archive-restore")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        // The receiver runs as postgres (the spool is restore_command's too): keyring and credentials are its.
        let keyring = fixture.directory + "/archive-keyring.json"
        try run(IT.walshipBinary, ["keys", "init", keyring])
        let keyID = try Keyring.load(path: keyring).currentID
        let credentials = fixture.directory + "/s3-credentials"
        #expect(
            FileManager.default.createFile(
                atPath: credentials,
                contents: Data(
                    "[default]\naws_access_key_id = \(store.credentials.accessKeyID)\naws_secret_access_key = \(store.credentials.secretAccessKey)\n"
                        .utf8), attributes: [.posixPermissions: 0o600]))
        // Copies only root reads, as a careless operator leaves them.
        let rootKeyring = fixture.directory + "/root-keyring.json"
        let rootCredentials = fixture.directory + "/root-s3-credentials"
        try run("/bin/cp", ["-p", keyring, rootKeyring])
        try run("/bin/cp", ["-p", credentials, rootCredentials])
        if IT.isRoot { try run("/bin/chown", ["postgres:postgres", keyring, credentials]) }
        let prefix = "dr"
        let url = "s3://\(store.bucket)/\(prefix)"
        var topology = try ShipTopology(fixture, spoolOwnedByPostgres: true)
        topology.receiverExtra = [
            "--archive", url, "--archive-endpoint", store.endpoint, "--archive-credentials", credentials,
            "--encryption-keyring", keyring, "--archive-part-size", "5M",
        ]
        try topology.startReceiver()
        try topology.startSender()
        let system = topology.systemIdentifier
        let primary = topology.primary

        // A backup of some size (read from the bucket in several ranges), then a load after it that replay reads from
        // the bucket, several segments of it.
        try primary.pgbench(["-i", "-s", "5", "-q"])
        let backup = try topology.takeBackup()
        try primary.pgbench(["-i", "-s", "6", "-q"])
        try primary.sql("CREATE TABLE known (id int PRIMARY KEY, note text)")
        try primary.sql("INSERT INTO known SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
        let between = try primary.sql("SELECT now()")
        try primary.sql("SELECT pg_sleep(1.2)")
        try primary.sql("INSERT INTO known SELECT g, md5(g::text) FROM generate_series(1001, 2500) g")
        try primary.pgbench(["-T", "3", "-c", "2"])
        let last = try topology.switchAndWait()
        let queries = [
            "SELECT sum(abalance), count(*) FROM pgbench_accounts", "SELECT count(*), sum(id) FROM known",
            "SELECT count(*) FROM pgbench_history",
        ]
        let expected = try queries.map { try primary.sql($0) }

        let archive = ["--archive", url, "--archive-endpoint", store.endpoint]
        // Caught up: the backup's record (uploaded last of the backup) listed, and the last segment in the bucket.
        let deadline = Date().addingTimeInterval(180)
        while true {
            let listed = try run(
                IT.walshipBinary, ["backups"] + archive + ["--encryption-keyring", keyring, "--json"],
                environment: store.environment, check: false)
            let head = try? await store.withClient { try await $0.headObject(key: "\(prefix)/\(system)/wal/\(last).lz4") }
            if listed.output.contains(backup), head != nil { break }
            guard Date() < deadline else {
                throw TestFailure("the backup and segment \(last) did not reach the bucket: \(listed.output)\(listed.error)")
            }
            try await Task.sleep(for: .milliseconds(500))
        }

        let backupObject = try await store.withClient { client in
            try await client.headObject(key: "\(prefix)/\(system)/base/\(backup)/base.tar.lz4")
        }
        #expect((backupObject?.size ?? 0) > 12 << 20, "the backup's object: \(String(describing: backupObject))")

        // A keyring only root reads (0600): the server's user could not, and restore says so
        // before anything is downloaded or created.
        let dr = fixture.directory + "/dr"
        let restore = ["restore"] + archive + ["--encryption-keyring", keyring, "--target-action", "promote"]
        if IT.isRoot {
            let unreadable = try run(
                IT.walshipBinary, ["restore"] + archive + ["--encryption-keyring", rootKeyring, "--pgdata", dr],
                environment: store.environment, check: false)
            #expect(
                unreadable.status != 0 && unreadable.error.contains("cannot read --encryption-keyring \(rootKeyring)"),
                "\(unreadable.error)")
            #expect(!FileManager.default.fileExists(atPath: dr))
        }

        // No credentials at all: refused, clearly.
        let bare = try run(IT.walshipBinary, restore + ["--pgdata", dr], check: false)
        #expect(bare.status != 0 && bare.error.contains("--archive has no credentials"), "\(bare.error)")
        #expect(!FileManager.default.fileExists(atPath: dr))

        // A wrong keyring: refused, naming the key the archive needs.
        let other = fixture.directory + "/other-keyring.json"
        try run(IT.walshipBinary, ["keys", "init", other])
        if IT.isRoot { try run("/bin/chown", ["postgres:postgres", other]) }
        let wrong = try run(
            IT.walshipBinary, ["restore"] + archive + ["--encryption-keyring", other, "--pgdata", dr],
            environment: store.environment, check: false)
        #expect(
            wrong.status != 0 && wrong.error.contains("was encrypted with key \(keyID), which the keyring does not hold"),
            "\(wrong.error)")
        #expect(!FileManager.default.fileExists(atPath: dr))

        // From the bucket alone, the credentials from this environment: written for the server's user beside the
        // data directory, never into it.
        let restored = try run(IT.walshipBinary, restore + ["--pgdata", dr], environment: store.environment, check: false)
        #expect(restored.status == 0, "\(restored.error)\(restored.output)")
        #expect(restored.output.contains("restored backup \(backup) (system \(system)"), "\(restored.output)")
        let credentialsFile = dr + ".walship/s3-credentials"
        let attributes = try FileManager.default.attributesOfItem(atPath: credentialsFile)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        if IT.isRoot { #expect(attributes[.ownerAccountName] as? String == "postgres") }
        let autoConf = try String(contentsOfFile: dr + "/postgresql.auto.conf", encoding: .utf8)
        #expect(!autoConf.contains(store.credentials.secretAccessKey), "the secret is in postgresql.auto.conf")
        #expect(autoConf.contains("--archive-credentials \(credentialsFile)"), "\(autoConf)")
        #expect(autoConf.contains("--encryption-keyring \(keyring)") && autoConf.contains("--archive-region us-east-1"))
        #expect(!FileManager.default.fileExists(atPath: dr + ".walship/staging-\(backup)"), "the staging directory stays")

        let copy = try fixture.startCopy(name: "dr", signal: "recovery.signal", settings: [])
        try waitUntil("the copy from the bucket to replay to the end and promote", timeout: 180) {
            let state = try copy.sql("SELECT pg_is_in_recovery()")
            return (state == "f", state)
        }
        for (query, value) in zip(queries, expected) {
            #expect(try copy.sql(query) == value, "\(query)")
        }
        // Replay read the bucket a few times, not once per segment: the rest came from the prefetch cache.
        let log = try String(contentsOfFile: dr + "/server.log", encoding: .utf8)
        let reads = log.components(separatedBy: "read from the archive;").count - 1
        let replayed = Set(log.matches(of: /restored log file "([0-9A-F]{24})" from archive/).map { String($0.output.1) })
        #expect(replayed.count >= 6, "replay read only \(replayed.sorted()) from the bucket")
        #expect(reads >= 1 && reads * 3 <= replayed.count, "\(reads) reads from the store for \(replayed.count) segments")
        #expect(!log.contains("could not be read from the archive"), "\(log.suffix(3000))")
        let cached = try FileManager.default.contentsOfDirectory(atPath: dr + ".walship/wal-cache/\(system)")
        #expect(cached.count <= 8, "the cache holds \(cached)")
        copy.stopImmediately()

        // Point in time from the bucket, the credentials from a file the server's user owns: the rows committed
        // before the target time, none after.
        let pitr = fixture.directory + "/pitr"
        let pitrArguments = [
            "restore", "--archive", url, "--archive-endpoint", store.endpoint, "--archive-credentials", credentials,
            "--encryption-keyring", keyring, "--pgdata", pitr, "--target-time", between, "--target-action", "promote",
            "--system", system,
        ]
        if IT.isRoot {
            let refused = try run(
                IT.walshipBinary, pitrArguments.map { $0 == credentials ? rootCredentials : $0 }, check: false)
            #expect(
                refused.status != 0 && refused.error.contains("cannot read the credentials file \(rootCredentials)"),
                "\(refused.error)")
            #expect(!FileManager.default.fileExists(atPath: pitr))
        }
        let atTime = try run(IT.walshipBinary, pitrArguments, check: false)
        #expect(atTime.status == 0, "\(atTime.error)")
        let pitrCopy = try fixture.startCopy(name: "pitr", signal: "recovery.signal", settings: [])
        try waitUntil("the point-in-time copy to promote", timeout: 180) {
            let state = try pitrCopy.sql("SELECT pg_is_in_recovery()")
            return (state == "f", state)
        }
        #expect(try pitrCopy.sql("SELECT count(*), max(id) FROM known") == "1000|1000")
        pitrCopy.stopImmediately()

        // The spool holds the backup: it comes from there, and the archive is where WAL the spool lacks comes from.
        let both = fixture.directory + "/both"
        let fromSpool = try run(
            IT.walshipBinary, restore + ["--spool", topology.spool, "--pgdata", both], environment: store.environment,
            check: false)
        #expect(fromSpool.status == 0 && fromSpool.output.contains("backup \(backup) is in the spool"), "\(fromSpool.error)")
        let bothConf = try String(contentsOfFile: both + "/postgresql.auto.conf", encoding: .utf8)
        #expect(bothConf.contains("restore-wal --spool \(topology.spool) --system \(system) --archive \(url)"), "\(bothConf)")

        // The spool without the backup (removed by its retention, say): the backup from the bucket, the WAL from
        // the spool first, then the bucket.
        let spoolBackup = topology.spool + "/\(system)/base/\(backup)"
        try run("/bin/mv", [spoolBackup, fixture.directory + "/set-aside-backup"])
        let spoolRecordCopy = fixture.directory + "/set-aside-backup/backup.json"
        let mixed = fixture.directory + "/mixed"
        let fromBoth = try run(
            IT.walshipBinary, restore + ["--spool", topology.spool, "--pgdata", mixed], environment: store.environment,
            check: false)
        #expect(fromBoth.status == 0, "\(fromBoth.error)")
        #expect(fromBoth.output.contains("restoring backup \(backup) of system \(system) from the archive"), "\(fromBoth.output)")
        let mixedConf = try String(contentsOfFile: mixed + "/postgresql.auto.conf", encoding: .utf8)
        #expect(mixedConf.contains("restore-wal --spool \(topology.spool) --system \(system) --archive \(url)"), "\(mixedConf)")
        let mixedCopy = try fixture.startCopy(name: "mixed", signal: "recovery.signal", settings: [])
        try waitUntil("the copy from the bucket's backup and the spool's WAL to promote", timeout: 180) {
            let state = try mixedCopy.sql("SELECT pg_is_in_recovery()")
            return (state == "f", state)
        }
        for (query, value) in zip(queries, expected) {
            #expect(try mixedCopy.sql(query) == value, "\(query)")
        }
        mixedCopy.stopImmediately()

        // A drill from the bucket alone: restored, replayed to the archive's newest segment, promoted, checked.
        let drillReport = fixture.logDirectory + "/archive-drill"
        let drill = try run(
            IT.walshipBinary,
            [
                "drill", "--archive", url, "--archive-endpoint", store.endpoint, "--archive-credentials", credentials,
                "--encryption-keyring", keyring, "--workdir", fixture.directory + "/drill", "--report", drillReport,
                "--check-sql", "SELECT count(*) FROM known", "--timeout", "120", "--pg-bindir", IT.pgBin!,
            ], timeout: 240, check: false)
        #expect(drill.status == 0, "\(drill.output)\(drill.error)")
        let drillJSON = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: drillReport + ".json")))
                as? [String: Any])
        #expect(drillJSON["outcome"] as? String == "promoted", "\(drillJSON)")
        let checks = drillJSON["checks"] as? [[String: Any]] ?? []
        #expect(
            checks.contains { $0["name"] as? String == "replayed the archive \(url)" && $0["passed"] as? Bool == true },
            "\(checks)")
        #expect(((drillJSON["drill"] as? [String: Any])?["checkResult"] as? [[String]])?.first == ["2500"], "\(drillJSON)")
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/drill"), "the drill's copy stays")

        // One byte flipped in the bucket's copy of the backup: refused before any data directory exists.
        let key = "\(prefix)/\(system)/base/\(backup)/base.tar.lz4"
        try await store.withClient { client in
            var bytes = try await client.getObject(key: key)
            bytes[bytes.startIndex + bytes.count / 2] ^= 0x01
            try await client.putObject(key: key, body: bytes)
        }
        let tampered = fixture.directory + "/tampered"
        let refused = try run(
            IT.walshipBinary, restore + ["--pgdata", tampered], environment: store.environment, check: false)
        #expect(
            refused.status != 0 && refused.error.contains("backup \(backup) cannot be restored from the archive")
                && refused.error.contains("fails authentication at chunk"), "\(refused.error)")
        #expect(!FileManager.default.fileExists(atPath: tampered), "a data directory was made from a tampered backup")
        #expect(!FileManager.default.fileExists(atPath: tampered + ".walship/staging-\(backup)"))

        // A second system's backup in the same bucket: without --system, restore names both and asks which.
        let record = try String(contentsOfFile: spoolRecordCopy, encoding: .utf8)
            .replacingOccurrences(of: "\"\(system)\"", with: "\"123\"")
        try await store.withClient { client in
            try await client.putObject(key: "\(prefix)/123/base/\(backup)/backup.json", body: Data(record.utf8))
        }
        let ambiguous = try run(
            IT.walshipBinary, restore + ["--pgdata", fixture.directory + "/ambiguous"], environment: store.environment,
            check: false)
        #expect(
            ambiguous.status != 0
                && ambiguous.error.contains("holds backups of several systems: 123, \(system) (hint: give --system ID)"),
            "\(ambiguous.error)")
    }
}
