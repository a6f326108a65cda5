import ArchiveCrypto
import Foundation
import ObjectStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `walship receive --archive` against a real Ceph RADOS Gateway: completed segments and a base backup reach the
/// bucket byte for byte in the background, and a store that goes away delays no commit, raises the archive alerts, and is caught up on
/// by itself when it comes back.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveShipTests {
    static func archive(_ status: [String: Any], system: String) -> [String: Any]? {
        ((status["systems"] as? [[String: Any]])?.first { $0["systemIdentifier"] as? String == system })?["archive"]
            as? [String: Any]
    }

    static func firing(_ status: [String: Any]) -> [String] {
        (status["alerts"] as? [[String: Any]] ?? []).compactMap { $0["condition"] as? String }
    }

    static func number(_ value: Any?) -> Double { (value as? NSNumber)?.doubleValue ?? -1 }

    @Test func completedSegmentsReachTheBucketAndAStoreOutageDelaysNoCommit() async throws {
        let fixture = try Fixture("archive-ship")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship'"])
        let prefix = "it/site-b"
        topology.receiverExtra = [
            "--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint,
            "--alert-archive-lag-seconds", "5", "--alert-recovery-seconds", "1",
            // The smallest part S3 allows: the base backup's archive goes up in several parts.
            "--archive-part-size", "5M",
        ]
        topology.receiverEnvironment = store.environment
        // What a receiver killed in the middle of a multipart upload leaves: an open upload with a part.
        let system0 = topology.systemIdentifier
        try await store.withClient { client in
            let key = "\(prefix)/\(system0)/base/20260101T000000Z/base.tar.lz4"
            let id = try await client.createMultipartUpload(key: key)
            _ = try await client.uploadPart(key: key, uploadID: id, partNumber: 1, body: Data(count: 5 << 20))
        }
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync"])
        let system = topology.systemIdentifier
        #expect(topology.receiver!.log.contains("plain http"), "an http:// endpoint is warned about")
        #expect(!topology.receiver!.log.contains(store.credentials.secretAccessKey), "the secret is never logged")

        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        try topology.primary.pgbench(["-T", "3", "-c", "2"])
        let last = try topology.switchAndWait()

        // Every completed file of the spool is in the bucket, confirmed, with the spool's bytes. (The archived count
        // only grows, and counts files the spool holds: once it covers this snapshot, the snapshot is archived.)
        let spoolFiles = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
            .filter { $0.hasSuffix(".lz4") }.sorted()
        #expect(spoolFiles.contains("\(last).lz4"))
        try waitUntil("the archive to catch up with the spool", timeout: 120) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            return (Self.number(archive["archivedObjects"]) >= Double(spoolFiles.count), "\(archive)")
        }
        try await store.withClient { client in
            #expect(try await client.listMultipartUploads(prefix: "\(prefix)/").isEmpty, "the open upload was aborted")
            let listed = try await client.listAllObjects(prefix: "\(prefix)/\(system)/wal/")
            #expect(Set(spoolFiles).isSubset(of: Set(listed.map { String($0.key.split(separator: "/").last!) })))
            for name in spoolFiles {
                let ours = try Data(contentsOf: URL(fileURLWithPath: topology.walDirectory + "/" + name))
                let theirs = try await client.getObject(key: "\(prefix)/\(system)/wal/\(name)")
                #expect(ours == theirs, "\(name) in the bucket differs from the spool's")
            }
        }

        // A complete base backup follows: its archive, manifest and record, the record last.
        let backup = try topology.takeBackup()
        let backupPrefix = "\(prefix)/\(system)/base/\(backup)/"
        try waitUntil("base backup \(backup) to be archived", timeout: 180) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            return (archive["lastArchived"] as? String == "base/\(backup)/backup.json", "\(archive)")
        }
        try await store.withClient { client in
            let objects = try await client.listAllObjects(prefix: backupPrefix)
            #expect(objects.map(\.key).sorted() == ["backup.json", "backup_manifest", "base.tar.lz4"].map { backupPrefix + $0 })
            let archived = objects.first { $0.key.hasSuffix("base.tar.lz4") }
            #expect(archived?.etag.contains("-") == true, "the backup's archive went up in parts: \(archived?.etag ?? "")")
            let backupDirectory = topology.spool + "/\(system)/base/\(backup)"
            for file in ["base.tar.lz4", "backup_manifest", "backup.json"] {
                let ours = try Data(contentsOf: URL(fileURLWithPath: backupDirectory + "/" + file))
                let theirs = try await client.getObject(key: backupPrefix + file)
                #expect(theirs == ours, "\(file) differs from the spool's")
            }
        }

        // The store goes away: commits go on (synchronous, acknowledged by the spool alone), the lag grows, the
        // alerts fire.
        store.stop()
        let started = Date()
        try topology.primary.pgbench(["-T", "4", "-c", "2"])
        let duringOutage = try topology.switchAndWait()
        #expect(Date().timeIntervalSince(started) < 60, "commits went on without the store")
        try waitUntil("archive_lag_seconds and archive_failing to fire", timeout: 90) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let firing = Self.firing(status)
            return (
                firing.contains("archive_lag_seconds") && firing.contains("archive_failing"),
                "\(firing) \(Self.archive(status, system: system) ?? [:])"
            )
        }
        let outage = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
        #expect(Self.number(outage["lagSegments"]) >= 1)
        #expect(Self.number(outage["lagBytes"]) > 0)
        #expect(Self.number(outage["lagSeconds"]) > 5)
        #expect((outage["lastError"] as? String)?.contains("no answer from the store") == true, "\(outage)")
        let table = try run(
            IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(topology.receiverStatusPort)"], check: false)
        #expect(table.output.contains("archive s3://\(store.bucket)/\(prefix)/\(system)/"), "\(table.output)")
        #expect(table.output.contains("FAILING"), "\(table.output)")
        let metrics = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(topology.receiverStatusPort)/metrics"]).output
        #expect(metrics.contains("walship_archive_failing{system=\"\(system)\"} 1"), "\(metrics.suffix(2000))")

        // The store is back: the lag drains to 0 by itself and the alerts resolve.
        try store.start()
        try waitUntil("the archive lag to drain", timeout: 120) {
            let status = try fetchStatus(port: topology.receiverStatusPort)
            let archive = Self.archive(status, system: system) ?? [:]
            return (
                Self.number(archive["lagSegments"]) == 0 && archive["failing"] as? Bool == false
                    && !Self.firing(status).contains("archive_failing"),
                "\(archive) \(Self.firing(status))"
            )
        }
        try await store.withClient { client in
            let head = try await client.headObject(key: "\(prefix)/\(system)/wal/\(duringOutage).lz4")
            #expect(head != nil, "the segment completed during the outage is archived")
        }
    }

    /// With --encryption-keyring the bucket holds none of the data in the clear, every object decrypts to the
    /// spool's file, a restarted receiver recognises what it sealed before without sending it again, and after
    /// `walship keys rotate` new objects use the new key while the old ones still open.
    @Test func anEncryptedArchiveHoldsNoPlaintextAndDecryptsToTheSpool() async throws {
        let fixture = try Fixture("archive-encrypted")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        let keyringPath = fixture.directory + "/archive-keyring.json"
        let created = try run(IT.walshipBinary, ["keys", "init", keyringPath])
        #expect(created.output.contains("Escrow it now"))
        let refused = try run(IT.walshipBinary, ["keys", "init", keyringPath], check: false)
        #expect(refused.status != 0 && refused.error.contains("never overwrites"), "\(refused.error)")
        let firstKey = try Keyring.load(path: keyringPath).currentID

        var topology = try ShipTopology(fixture)
        let prefix = "enc"
        topology.receiverExtra = [
            "--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint,
            "--encryption-keyring", keyringPath, "--archive-part-size", "5M",
        ]
        topology.receiverEnvironment = store.environment
        try topology.startReceiver()
        try topology.startSender()
        let system = topology.systemIdentifier
        let listing = [
            "backups", "--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint,
            "--encryption-keyring", keyringPath, "--json",
        ]
        // No backup is complete in the archive yet: an empty list.
        let none = try run(IT.walshipBinary, listing, environment: store.environment)
        #expect((try JSONSerialization.jsonObject(with: Data(none.output.utf8)) as? [Any])?.isEmpty == true, "\(none.output)")
        // Rows whose text LZ4 keeps as literals: each md5 is unique, so the spool's files contain them as they are.
        try topology.primary.pgbench(["-i", "-s", "3", "-q"])
        try topology.primary.sql("CREATE TABLE secrets AS SELECT i, md5(i::text) AS token FROM generate_series(1, 30000) i")
        let backup = try topology.takeBackup()
        try topology.switchAndWait()

        func spoolFiles() throws -> [String] {
            let wal = try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
                .filter { $0.hasSuffix(".lz4") || $0.hasSuffix(".history") }.map { "wal/" + $0 }
            return (wal + ["base.tar.lz4", "backup_manifest", "backup.json"].map { "base/\(backup)/" + $0 }).sorted()
        }
        let files = try spoolFiles()
        // Read now: once archived, what no kept backup needs (the segments before the backup) may be pruned.
        var spoolBytes: [String: Data] = [:]
        for path in files {
            spoolBytes[path] = try Data(contentsOf: URL(fileURLWithPath: topology.spool + "/\(system)/" + path))
        }
        // Caught up: as many objects as the spool's files, and the backup's record, which goes up last, listed.
        try waitUntil("the encrypted archive to catch up with the spool", timeout: 180) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            let listed = try run(IT.walshipBinary, listing, environment: store.environment, check: false).output
            return (
                Self.number(archive["archivedObjects"]) >= Double(files.count) && listed.contains(backup),
                "\(archive) \(listed)"
            )
        }
        let status = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
        #expect(status["encryptionKeyID"] as? String == firstKey)

        let keyring = try Keyring.load(path: keyringPath)
        let tokens = try topology.primary.sql("SELECT token FROM secrets WHERE i <= 3000 ORDER BY i")
            .split(separator: "\n").map { Data($0.utf8) }
        #expect(tokens.count == 3000)
        let etags = try await store.withClient { client -> [String: String] in
            var plaintextSeen = 0
            var etags: [String: String] = [:]
            for path in files {
                let ours = try #require(spoolBytes[path])
                let key = "\(prefix)/\(system)/\(path)"
                let theirs = try await client.getObject(key: key)
                etags[key] = try await client.headObject(key: key)?.etag
                #expect(try SealedObject.keyID(of: theirs) == firstKey)
                let opened = try SealedObject.open(theirs, binding: .init(system: UInt64(system)!, name: path), keyring: keyring)
                #expect(opened == ours, "\(path) does not decrypt to the spool's file")
                // The known plaintext the spool's file shows in the clear is nowhere in the object.
                for token in tokens where ours.range(of: token) != nil {
                    plaintextSeen += 1
                    #expect(
                        theirs.range(of: token) == nil, "\(path) shows \(String(decoding: token, as: UTF8.self)) in the clear")
                }
                #expect(theirs.range(of: ours.prefix(64)) == nil || ours.count < 64)
            }
            #expect(plaintextSeen > 20, "the check saw the table's text in the spool \(plaintextSeen) times")
            // The backup's archive went up in parts, sealed as it was read.
            let archive = etags["\(prefix)/\(system)/base/\(backup)/base.tar.lz4"] ?? ""
            #expect(archive.contains("-"), "ETag \(archive)")
            return etags
        }

        // The archive lists the complete backup, its record opened with the keyring; without it, refused.
        let listed = try run(IT.walshipBinary, listing, environment: store.environment)
        let backups = try #require(try JSONSerialization.jsonObject(with: Data(listed.output.utf8)) as? [[String: Any]])
        #expect(backups.map { $0["id"] as? String } == [backup], "\(listed.output)")
        let locked = try run(
            IT.walshipBinary, listing.filter { $0 != "--encryption-keyring" && $0 != keyringPath },
            environment: store.environment, check: false)
        #expect(locked.status != 0 && locked.error.contains("is encrypted"), "\(locked.error)")

        // restore-wal reads from the archive alone (no spool) what PostgreSQL gets from the spool, opened with the
        // keyring; without it the object is refused as encrypted (126), a file the archive lacks is routine (1).
        let segment = try #require(files.last { $0.hasPrefix("wal/") && $0.hasSuffix(".lz4") })
        let name = String(segment.dropFirst("wal/".count).dropLast(".lz4".count))
        let fromSpool = fixture.directory + "/from-spool"
        let fromArchive = fixture.directory + "/from-archive"
        try run(IT.walshipBinary, ["restore-wal", "--spool", topology.spool, name, fromSpool])
        let archiveOptions = [
            "--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint, "--system", system,
        ]
        try run(
            IT.walshipBinary, ["restore-wal"] + archiveOptions + ["--encryption-keyring", keyringPath, name, fromArchive],
            environment: store.environment)
        let restoredFromArchive = try Data(contentsOf: URL(fileURLWithPath: fromArchive))
        #expect(restoredFromArchive.count == 16 << 20)
        #expect(restoredFromArchive == (try Data(contentsOf: URL(fileURLWithPath: fromSpool))))
        let noKeyring = try run(
            IT.walshipBinary, ["restore-wal"] + archiveOptions + [name, fixture.directory + "/no-keyring"],
            environment: store.environment, check: false)
        #expect(noKeyring.status == 126 && noKeyring.error.contains("is encrypted"), "\(noKeyring.error)")
        let absent = try run(
            IT.walshipBinary,
            ["restore-wal"] + archiveOptions + [
                "--encryption-keyring", keyringPath, "0000000100000000000000FE", fixture.directory + "/absent",
            ],
            environment: store.environment, check: false)
        #expect(absent.status == 1, "\(absent.error)")
        #expect(!FileManager.default.fileExists(atPath: fixture.directory + "/absent"))

        // Rotate, restart: what is in the bucket is recognised (not sent again); new objects use the new key.
        let rotated = try run(IT.walshipBinary, ["keys", "rotate", keyringPath])
        #expect(rotated.output.contains("still open what they encrypted"), "\(rotated.output)")
        let secondKey = try Keyring.load(path: keyringPath).currentID
        #expect(secondKey != firstKey)
        topology.receiver?.stop()
        // Counted while the receiver is down: its retention may have pruned archived segments meanwhile.
        let heldAtRestart = try spoolFiles().count
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try topology.primary.sql("INSERT INTO secrets SELECT i, md5(i::text) FROM generate_series(30001, 40000) i")
        let after = try topology.switchAndWait()
        try waitUntil("the segment after the rotation to be archived", timeout: 120) {
            let archive = Self.archive(try fetchStatus(port: topology.receiverStatusPort), system: system) ?? [:]
            return (archive["lastArchived"] as? String == "wal/\(after).lz4", "\(archive)")
        }
        let receiverLog = topology.receiver!.log
        #expect(
            receiverLog.contains("the object store already holds \(heldAtRestart) of this system's spool files"),
            "\(receiverLog.suffix(3000))")
        let rotatedKeyring = try Keyring.load(path: keyringPath)
        try await store.withClient { client in
            let newest = try await client.getObject(key: "\(prefix)/\(system)/wal/\(after).lz4")
            #expect(try SealedObject.keyID(of: newest) == secondKey)
            for (key, etag) in etags {
                #expect(try await client.headObject(key: key)?.etag == etag, "\(key) was uploaded again")
            }
            let oldKey = etags.keys.sorted().first { $0.contains("/wal/") }!
            let old = try await client.getObject(key: oldKey)
            let path = String(oldKey.dropFirst("\(prefix)/\(system)/".count))
            let opened = try SealedObject.open(old, binding: .init(system: UInt64(system)!, name: path), keyring: rotatedKeyring)
            #expect(opened == spoolBytes[path])
        }
    }

    /// `walship check` proves the archive's settings: the store takes, returns and deletes a probe object with the
    /// configured credentials (nothing stays behind); wrong credentials are a FAIL line with the store's answer.
    @Test func walshipCheckTriesTheArchive() async throws {
        let fixture = try Fixture("archive-check")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        let credentials = fixture.directory + "/s3-credentials"
        func configure(secret: String) throws -> String {
            FileManager.default.createFile(
                atPath: credentials,
                contents: Data(
                    "[default]\naws_access_key_id = \(store.credentials.accessKeyID)\naws_secret_access_key = \(secret)\n".utf8),
                attributes: [.posixPermissions: 0o600])
            let path = fixture.directory + "/walship.toml"
            let toml = """
                [receive]
                listen = "127.0.0.1:\(IT.freePort())"
                spool = "\(fixture.directory)/spool"
                insecure = true
                archive = "s3://\(store.bucket)/checked"
                archive-endpoint = "\(store.endpoint)"
                archive-credentials = "\(credentials)"

                """
            FileManager.default.createFile(atPath: path, contents: Data(toml.utf8))
            return path
        }
        let good = try run(
            IT.walshipBinary, ["check", "--config", try configure(secret: store.credentials.secretAccessKey)], check: false)
        let archiveLines = good.output.split(separator: "\n").filter { $0.contains("archive") }
        #expect(good.status == 0, "\(good.output)\(good.error)")
        #expect(
            archiveLines.contains {
                $0.hasPrefix("ok    archive: s3://\(store.bucket)/checked") && $0.contains("takes, returns and deletes")
            })
        #expect(archiveLines.contains { $0.hasPrefix("WARN  archive encryption: none") })
        #expect(!good.output.contains(store.credentials.secretAccessKey), "the secret is never printed")
        let left = try await store.withClient { try await $0.listAllObjects(prefix: "checked/") }
        #expect(left.isEmpty, "the probe stayed behind: \(left.map(\.key))")

        let bad = try run(IT.walshipBinary, ["check", "--config", try configure(secret: "wrong-secret")], check: false)
        #expect(bad.status == 1)
        #expect(
            bad.output.split(separator: "\n").contains { $0.hasPrefix("FAIL  archive:") && $0.contains("SignatureDoesNotMatch") },
            "\(bad.output)")
        #expect(!bad.output.contains("wrong-secret"))
    }
}
