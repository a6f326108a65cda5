import Archive
import ArchiveCrypto
import ArgumentParser
import ChildProcess
import Foundation
import LZ4Codec
import ObjectStore
import WALCore

/// `--archive s3://BUCKET/PREFIX` and its settings, for a command that reads what `walship receive --archive` wrote.
/// Credentials come from `--archive-credentials` or the environment, never the command line.
struct ArchiveReadOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Read from the archive walship receive --archive wrote (docs/archive.md) what the spool lacks: s3://BUCKET/PREFIX.",
            valueName: "s3-url"))
    var archive: String?

    @Option(help: ArgumentHelp("With --archive: the object store's address, https://HOST[:PORT].", valueName: "url"))
    var archiveEndpoint: String?

    @Option(help: ArgumentHelp("With --archive: the region (default: AWS_REGION, else us-east-1).", valueName: "region"))
    var archiveRegion: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: the store's credentials in the AWS credentials format (default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).",
            valueName: "file"))
    var archiveCredentials: String?

    @Option(help: ArgumentHelp("With --archive: the CA of the store's TLS certificate (PEM).", valueName: "file"))
    var archiveCa: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: the keyring that opens the archive's encrypted objects (walship keys init).", valueName: "file"))
    var encryptionKeyring: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: a command (run with /bin/sh -c) that prints the keyring on standard output, e.g. from Vault or a KMS; instead of --encryption-keyring.",
            valueName: "command"))
    var encryptionKeyCommand: String?

    func validate() throws {
        guard let archive else {
            if archiveEndpoint != nil || archiveRegion != nil || archiveCredentials != nil || archiveCa != nil
                || encryptionKeyring != nil || encryptionKeyCommand != nil
            {
                throw ValidationError(
                    "--archive-endpoint, --archive-region, --archive-credentials, --archive-ca, --encryption-keyring and --encryption-key-command go with --archive"
                )
            }
            return
        }
        try validateKeySource(file: encryptionKeyring, command: encryptionKeyCommand)
        do { _ = try ArchiveConfiguration(url: archive) } catch { throw ValidationError(error.description) }
        guard archiveEndpoint != nil else { throw ValidationError("--archive needs --archive-endpoint URL") }
    }

    /// The store, the archive's layout and the keyring; the caller shuts the client down.
    func open() async throws -> (client: S3Client, layout: ArchiveConfiguration, keyring: Keyring?) {
        guard let archive, let archiveEndpoint else { throw ValidationError("no --archive") }
        // The keyring first: a client made is a client to shut down.
        let keyring = try await resolveKeyring(file: encryptionKeyring, command: encryptionKeyCommand)
        let (client, layout) = try archiveStore(
            url: archive, endpoint: archiveEndpoint, region: archiveRegion, credentialsFile: archiveCredentials,
            caFile: archiveCa)
        return (client, layout, keyring)
    }
}

/// The object store an `--archive s3://BUCKET/PREFIX` and its settings name (`walship receive` writes it, `restore-wal`
/// and `backups` read it). Credentials come from `credentialsFile`, else the environment, never the command line.
func archiveStore(
    url: String, endpoint: String, region: String?, credentialsFile: String?, caFile: String?
) throws -> (client: S3Client, layout: ArchiveConfiguration) {
    let environment = ProcessInfo.processInfo.environment
    do {
        let layout = try ArchiveConfiguration(url: url)
        let credentials: AWSCredentials
        if let credentialsFile {
            credentials = try AWSCredentials.load(file: credentialsFile)
        } else if let fromEnvironment = AWSCredentials.fromEnvironment(environment) {
            credentials = fromEnvironment
        } else {
            throw S3ConfigurationError(
                "--archive has no credentials",
                hint: "give --archive-credentials FILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        }
        let region = region ?? environment["AWS_REGION"].flatMap { $0.isEmpty ? nil : $0 } ?? "us-east-1"
        let client = try S3Client(
            .init(
                endpoint: try S3Endpoint(parsing: endpoint), bucket: layout.bucket, region: region,
                credentials: credentials, caFile: caFile))
        return (client, layout)
    } catch let error as S3ConfigurationError {
        throw ValidationError(error.description)
    }
}

/// `--encryption-keyring FILE`, its problems said as that option's.
func loadKeyring(_ path: String) throws -> Keyring {
    do { return try Keyring.load(path: path) } catch { throw ValidationError("--encryption-keyring: \(error)") }
}

/// `--encryption-keyring` and `--encryption-key-command` name the same thing two ways: one of them at most.
func validateKeySource(file: String?, command: String?) throws {
    guard file == nil || command == nil else {
        throw ValidationError(
            "--encryption-keyring and --encryption-key-command exclude each other: give the keyring's file or the command that prints it"
        )
    }
    if let command, command.trimmingCharacters(in: .whitespaces).isEmpty {
        throw ValidationError("--encryption-key-command is empty: give the command that prints the keyring")
    }
}

/// The keyring `--encryption-keyring FILE` or `--encryption-key-command CMD` gives; nil with neither.
func resolveKeyring(file: String?, command: String?) async throws -> Keyring? {
    if let file { return try loadKeyring(file) }
    if let command { return try await keyringFromCommand(command) }
    return nil
}

/// `--encryption-key-command CMD`: the keyring a command prints on standard output (from Vault or a KMS), in the
/// keyring file's format. Run with /bin/sh -c; its output is read from memory (/dev/shm), never written to disk,
/// and neither it nor the command is logged or put in an error.
func keyringFromCommand(_ command: String) async throws -> Keyring {
    let hint =
        "run the command by hand as this user: it must print the keyring walship keys init writes and exit 0"
    let child = ChildProcess(
        "/bin/sh", ["-c", command], output: .capturedInMemory, errorOutput: .captured, captureLimit: 1 << 20,
        timeout: .seconds(120))
    let result: ChildProcess.Result
    do {
        result = try await child.run()
    } catch {
        throw ValidationError("--encryption-key-command: \(error) (hint: \(hint))")
    }
    guard result.succeeded else {
        let firstLine = result.standardError.split(whereSeparator: \.isNewline).first.map(String.init)
        throw ValidationError(
            "--encryption-key-command exited with status \(result.status)"
                + (firstLine.map { ": \($0)" } ?? ", with nothing on standard error") + " (hint: \(hint))")
    }
    let output = Data(result.standardOutput.utf8)
    // The decoder's own message may quote the output; a keyring's bytes are never repeated in an error.
    guard (try? JSONSerialization.jsonObject(with: output)) != nil else {
        throw ValidationError(
            "--encryption-key-command printed \(output.count) bytes that are not a walship keyring (hint: \(hint))")
    }
    do {
        return try Keyring.decode(output, origin: "the output of --encryption-key-command")
    } catch {
        throw ValidationError("--encryption-key-command: \(error)")
    }
}

/// An archived object's bytes as the spool held them: opened with `keyring` when sealed (bound to the system and
/// the object's path under the system), as they are when not.
func openArchivedObject(_ bytes: Data, key: String, system: UInt64, path: String, keyring: Keyring?) throws -> Data {
    guard let keyID = try? SealedObject.keyID(of: bytes) else { return bytes }
    guard let keyring else {
        throw ArchivedWAL.Damaged(
            description:
                "\(key) is encrypted (key \(keyID)) (hint: give --encryption-keyring with the keyring that holds that key)")
    }
    do {
        return try SealedObject.open(bytes, binding: .init(system: system, name: path), keyring: keyring)
    } catch {
        throw ArchivedWAL.Damaged(description: "\(key) cannot be opened: \(error)")
    }
}

/// A WAL file as PostgreSQL wants it, read from the archive: opened with the keyring when sealed, a segment's LZ4 frame
/// decompressed. Nil when the archive does not hold it.
struct ArchivedWAL {
    struct Damaged: Error, CustomStringConvertible {
        let description: String
    }

    static func fetch(
        name: String, system: UInt64, client: S3Client, layout: ArchiveConfiguration, keyring: Keyring?
    ) async throws -> Data? {
        let isHistory = timeline(ofHistoryFileName: name) != nil
        guard isHistory || name.wholeMatch(of: /[0-9A-F]{24}/) != nil else {
            throw ValidationError("\(name) is not a WAL segment or history file name")
        }
        let path = "wal/" + name + (isHistory ? "" : ".lz4")
        let key = layout.objectKey(system: system, path: path)
        guard try await client.headObject(key: key) != nil else { return nil }
        let bytes = try openArchivedObject(
            try await client.getObject(key: key), key: key, system: system, path: path, keyring: keyring)
        if isHistory { return bytes }
        let segment: [UInt8]
        do {
            segment = try bytes.withUnsafeBytes { raw throws(LZ4.FrameError) in
                try LZ4.decompressFrame(raw, maxOutputBytes: 1 << 30)
            }
        } catch {
            throw Damaged(description: "\(key) is not a whole LZ4 frame: \(error)")
        }
        guard segment.count >= 1 << 20, segment.count & (segment.count - 1) == 0 else {
            throw Damaged(description: "\(key) holds \(segment.count) bytes, not a WAL segment")
        }
        return Data(segment)
    }
}
