import ArchiveCrypto
import Foundation
import ObjectStore
import Testing

/// `walship verify` against a real Ceph RADOS Gateway and a real spool: clean after shipping a load with
/// encryption, both key ids reported after a rotation, a flipped byte in one object CRITICAL naming it, a deleted
/// middle segment a gap naming it.
@Suite(
    .serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"),
    .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct ArchiveVerifyTests {
    @Test func verifyFindsTheArchiveCleanThenNamesDamageAndAGap() async throws {
        let fixture = try Fixture("archive-verify")
        let store = try S3Store(directory: fixture.directory + "/s3")
        defer {
            // The store first: the fixture's tear-down removes its directory, and with it what stop needs.
            store.stop()
            fixture.tearDown()
            _ = try? run("/bin/rm", ["-rf", fixture.directory], check: false)
        }
        let keyringPath = fixture.directory + "/archive-keyring.json"
        try run(IT.walshipBinary, ["keys", "init", keyringPath])
        let firstKey = try Keyring.load(path: keyringPath).currentID

        var topology = try ShipTopology(fixture)
        let prefix = "verify"
        let archive = ["--archive", "s3://\(store.bucket)/\(prefix)", "--archive-endpoint", store.endpoint]
        topology.receiverExtra = archive + ["--encryption-keyring", keyringPath, "--archive-part-size", "5M"]
        topology.receiverEnvironment = store.environment
        try topology.startReceiver()
        try topology.startSender()
        let system = topology.systemIdentifier
        try topology.primary.pgbench(["-i", "-s", "3", "-q"])
        let backup = try topology.takeBackup()
        try topology.primary.pgbench(["-T", "2", "-c", "2"])
        try topology.switchAndWait()

        func verify(_ arguments: [String]) throws -> CommandResult {
            try run(IT.walshipBinary, ["verify"] + arguments, timeout: 300, environment: store.environment, check: false)
        }
        let withKeyring = archive + ["--encryption-keyring", keyringPath]
        func spoolObjectCount() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: topology.walDirectory)
                .filter { $0.hasSuffix(".lz4") || $0.hasSuffix(".history") }.count + 3
        }
        func waitUntilArchived(_ what: String) throws {
            let expected = try spoolObjectCount()
            try waitUntil("the archive to hold \(what)", timeout: 180) {
                let status = try fetchStatus(port: topology.receiverStatusPort)
                let archive = ArchiveShipTests.archive(status, system: system) ?? [:]
                return (
                    ArchiveShipTests.number(archive["archivedObjects"]) >= Double(expected)
                        && ArchiveShipTests.number(archive["lagSegments"]) == 0,
                    "\(archive)"
                )
            }
        }
        try waitUntilArchived("the spool's files and backup \(backup)")

        // Clean: the archive (decrypted), the spool, and both at once; the key id in use is the only key's.
        let clean = try verify(withKeyring)
        #expect(clean.status == 0, "\(clean.output)\(clean.error)")
        let summary = clean.output.split(separator: "\n").last.map(String.init) ?? ""
        #expect(summary.hasPrefix("OK: archive s3://\(store.bucket)/\(prefix):"), "\(summary)")
        #expect(summary.contains("1 backup;") && summary.contains("key ids in use: \(firstKey) ("), "\(summary)")
        let spool = try verify(["--spool", topology.spool])
        #expect(spool.status == 0, "\(spool.output)")
        #expect(spool.output.hasPrefix("OK: spool \(topology.spool):"), "\(spool.output)")
        let both = try verify(["--spool", topology.spool, "--system", system, "--json"] + withKeyring)
        #expect(both.status == 0, "\(both.output)")
        let document = try JSONSerialization.jsonObject(with: Data(both.output.utf8)) as? [String: Any] ?? [:]
        #expect(document["status"] as? String == "OK")
        let reports = document["reports"] as? [[String: Any]] ?? []
        #expect(reports.count == 2)
        #expect(((reports.last?["keyIDs"] as? [String: Any])?[firstKey] as? NSNumber)?.intValue ?? 0 > 3, "\(both.output)")
        // Without the keyring the content cannot be checked: UNKNOWN.
        let locked = try verify(archive)
        #expect(locked.status == 3, "\(locked.output)")
        #expect(locked.output.contains("--encryption-keyring"))

        // A rotated keyring: new objects under the new key, the old ones still in use. The receiver now reads the
        // keyring from a command (as from Vault), which never shows in its log.
        try run(IT.walshipBinary, ["keys", "rotate", keyringPath])
        let secondKey = try Keyring.load(path: keyringPath).currentID
        let keyCommand = ["--encryption-key-command", "cat '\(keyringPath)'"]
        topology.receiver?.stop()
        topology.receiverExtra = archive + keyCommand + ["--archive-part-size", "5M"]
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try topology.primary.pgbench(["-T", "2", "-c", "2"])
        try topology.switchAndWait()
        try waitUntilArchived("the segments after the rotation")
        let rotated = try verify(withKeyring)
        #expect(rotated.status == 0, "\(rotated.output)")
        #expect(rotated.output.contains("\(firstKey) (") && rotated.output.contains("\(secondKey) ("), "\(rotated.output)")
        let receiverLog = topology.receiver!.log
        #expect(receiverLog.contains("the archive is encrypted client-side"), "\(receiverLog.suffix(2000))")
        let material = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: keyringPath)))
        for key in ((material as? [String: Any])?["keys"] as? [[String: Any]]) ?? [] {
            #expect(!receiverLog.contains(key["key"] as? String ?? "-"), "key material in the receiver's log")
        }
        // verify takes the command too; a failing one is UNKNOWN with its status and first line of standard error.
        let byCommand = try verify(archive + keyCommand)
        #expect(byCommand.status == 0, "\(byCommand.output)")
        #expect(byCommand.output.contains("\(secondKey) ("), "\(byCommand.output)")
        let sealedVault = try verify(archive + ["--encryption-key-command", "echo 'vault: sealed' >&2; exit 2"])
        #expect(sealedVault.status == 3, "\(sealedVault.output)")
        #expect(sealedVault.output.contains("exited with status 2: vault: sealed"), "\(sealedVault.output)")

        // One byte flipped in one object in the bucket: CRITICAL, naming that object (and nothing else).
        let walPrefix = "\(prefix)/\(system)/wal/"
        let segments = try await store.withClient { client in
            try await client.listAllObjects(prefix: walPrefix).map(\.key).filter { $0.hasSuffix(".lz4") }.sorted()
        }
        #expect(segments.count >= 4, "\(segments)")
        let damaged = segments[segments.count / 2]
        let original = try await store.withClient { client in
            let bytes = try await client.getObject(key: damaged)
            var flipped = bytes
            flipped[flipped.count / 2] ^= 0x01
            try await client.putObject(key: damaged, body: flipped)
            return bytes
        }
        let tampered = try verify(withKeyring)
        #expect(tampered.status == 2, "\(tampered.output)")
        let critical = tampered.output.split(separator: "\n").filter { $0.hasPrefix("CRITICAL ") }
        #expect(critical.count == 1, "\(tampered.output)")
        #expect(critical.first?.hasPrefix("CRITICAL s3://\(store.bucket)/\(damaged): is damaged") == true, "\(tampered.output)")

        // Put back, then a middle segment deleted: the gap is named.
        let missing = segments[segments.count / 2 - 1]
        try await store.withClient { client in
            try await client.putObject(key: damaged, body: original)
            try await client.deleteObject(key: missing)
        }
        let gap = try verify(withKeyring)
        #expect(gap.status == 2, "\(gap.output)")
        let name = String(missing.dropFirst(walPrefix.count).dropLast(".lz4".count))
        #expect(gap.output.contains("timeline 1 has a gap: segment \(name) is missing"), "\(gap.output)")
        #expect(!gap.output.contains("is damaged"), "\(gap.output)")
    }
}
