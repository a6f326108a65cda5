import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The Debian package `make package` builds, made here from the build under test and the man pages
/// `make manual` generated (`make test` runs it first): what it holds, and, as root where no walship package is
/// installed, that `dpkg -i` gives a working `walship` and removing or purging it keeps the spool and config.
@Suite(.serialized) struct PackageTests {
    static let manualDirectory = IT.repositoryRoot + "/.build/manual"

    /// Builds the package into a fresh directory; returns its path.
    func buildPackage(in directory: String) throws -> String {
        #expect(
            FileManager.default.fileExists(atPath: Self.manualDirectory + "/walship.1"),
            "no man pages in \(Self.manualDirectory): run make manual (make test does)")
        // The debug build is large: compress fast.
        let built = try run(
            IT.repositoryRoot + "/scripts/package-deb.sh", [IT.walshipBinary, Self.manualDirectory, directory],
            timeout: 120, environment: ["WALSHIP_DEB_COMPRESSION": "gzip"])
        let path = try #require(built.output.split(separator: "\n").last.map(String.init))
        #expect(path.hasSuffix(".deb") && FileManager.default.fileExists(atPath: path), "last line: \(built.output)")
        return path
    }

    /// The subcommands' command names as `walship --help` lists them (and their own subcommands).
    func subcommandPages() throws -> Set<String> {
        func listed(_ command: [String]) throws -> [String] {
            let help = try run(IT.walshipBinary, command + ["--help"]).output
            guard let section = help.components(separatedBy: "SUBCOMMANDS:").dropFirst().first else { return [] }
            // "  name   abstract", up to the blank line before "See 'walship help <subcommand>'".
            let entries = section.components(separatedBy: "\n\n").first ?? ""
            return entries.split(separator: "\n").compactMap { line in
                line.firstMatch(of: /^  ([a-z][a-z-]*)( |$)/).map { String($0.output.1) }
            }
        }
        // The generator writes a page for ArgumentParser's own help subcommand too.
        var pages: Set<String> = ["walship.1", "walship.help.1"]
        for name in try listed([]) {
            pages.insert("walship.\(name).1")
            for inner in try listed([name]) { pages.insert("walship.\(name).\(inner).1") }
        }
        return pages
    }

    @Test func thePackageHoldsTheBinaryUnitsManualsCompletionsAndDocs() throws {
        let directory = NSTemporaryDirectory() + "walship-it-package-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let package = try buildPackage(in: directory)

        let info = try run("/usr/bin/dpkg-deb", ["--field", package, "Package", "Version", "Depends"]).output
        let version = try run(IT.walshipBinary, ["--version"]).output.split(separator: " ")[1]
        #expect(info.contains("Package: walship") && info.contains("Version: \(version)"), "\(info)")
        #expect(info.contains("libpq5") && info.contains("liblz4-1"), "\(info)")

        let listing = try run("/usr/bin/dpkg-deb", ["--contents", package]).output
        let files = Set(
            listing.split(separator: "\n").compactMap { line in
                line.split(separator: " ", omittingEmptySubsequences: true).last.map { String($0.dropFirst()) }
            })
        for expected in [
            "/usr/bin/walship", "/lib/systemd/system/walship-send.service", "/lib/systemd/system/walship-receive.service",
            "/lib/systemd/system/walship-backup.service", "/lib/systemd/system/walship-backup.timer",
            "/etc/walship/walship.toml.example", "/usr/share/bash-completion/completions/walship",
            "/usr/share/zsh/vendor-completions/_walship", "/usr/share/doc/walship/runbook.md",
            "/usr/share/doc/walship/deployment.md", "/usr/share/doc/walship/copyright",
        ] {
            #expect(files.contains(expected), "\(expected) is not in the package")
        }
        #expect(listing.contains("-rwxr-xr-x root/root") && listing.contains("./usr/bin/walship"), "\(listing)")
        // One page per command, nested ones too (walship.certs.init.1, walship.standby.forget.1).
        let pages = Set(
            files.filter { $0.hasPrefix("/usr/share/man/man1/") && $0.hasSuffix(".1.gz") }.map {
                String($0.dropFirst("/usr/share/man/man1/".count).dropLast(".gz".count))
            })
        let commands = try subcommandPages()
        #expect(commands.contains("walship.send.1") && commands.contains("walship.standby.forget.1"), "\(commands)")
        #expect(pages == commands, "man pages \(pages.sorted()) differ from the commands \(commands.sorted())")

        // The units run the packaged binary, as postgres, and point at documentation the package installs.
        let extracted = directory + "/root"
        try run("/usr/bin/dpkg-deb", ["--extract", package, extracted])
        for unit in ["walship-send.service", "walship-receive.service", "walship-backup.service"] {
            let text = try String(contentsOfFile: extracted + "/lib/systemd/system/" + unit, encoding: .utf8)
            #expect(text.contains("ExecStart=/usr/bin/walship ") && !text.contains("/usr/local/"), "\(unit): \(text)")
            #expect(text.contains("User=postgres"), "\(unit)")
        }
        for unit in ["walship-send.service", "walship-receive.service", "walship-backup.service", "walship-backup.timer"] {
            let text = try String(contentsOfFile: extracted + "/lib/systemd/system/" + unit, encoding: .utf8)
            for link in text.matches(of: /Documentation=file:\/\/(\S+)/) {
                #expect(
                    FileManager.default.fileExists(atPath: extracted + link.output.1), "\(unit): \(link.output.1) is not packaged"
                )
            }
        }
        let page = try run("/usr/bin/gzip", ["-dc", extracted + "/usr/share/man/man1/walship.send.1.gz"]).output
        #expect(page.contains(".Dt WALSHIP.SEND 1") && page.contains("Fl -source"), "\(page.prefix(400).description)")
        let completion = try String(
            contentsOfFile: extracted + "/usr/share/bash-completion/completions/walship", encoding: .utf8)
        #expect(completion.contains("switchover") && completion.contains("complete"), "\(completion.prefix(200).description)")
        let example = try String(contentsOfFile: extracted + "/etc/walship/walship.toml.example", encoding: .utf8)
        #expect(example.contains("[send]") && example.contains("[receive]"))
    }

    /// Installs the package for real: only as root, and only where no walship package or /usr/bin/walship exists
    /// (CI's fresh container; never over a host's own installation).
    @Test(.enabled(if: IT.isRoot && !FileManager.default.fileExists(atPath: "/usr/bin/walship")))
    func installingNeedsNoBuildAndRemovingKeepsTheSpoolAndConfig() throws {
        let directory = NSTemporaryDirectory() + "walship-it-package-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let package = try buildPackage(in: directory)
        let configPath = "/etc/walship/walship.toml"
        let spoolMarker = "/var/lib/walship/walship-package-test"
        let hadConfig = FileManager.default.fileExists(atPath: configPath)
        let hadDirectories = ["/etc/walship", "/var/lib/walship"].filter { FileManager.default.fileExists(atPath: $0) }
        defer {
            _ = try? run("/usr/bin/dpkg", ["--purge", "walship"], check: false)
            unlink(spoolMarker)
            if !hadConfig { unlink(configPath) }
            for directory in ["/etc/walship", "/var/lib/walship"] where !hadDirectories.contains(directory) {
                rmdir(directory)
            }
        }

        let installed = try run("/usr/bin/dpkg", ["--install", package], timeout: 120)
        #expect(installed.output.contains("units installed disabled"), "\(installed.output)")
        let version = try run("/usr/bin/walship", ["--version"])
        #expect(version.output.hasPrefix("walship "), "\(version.output)")
        let manual = try run("/usr/bin/man", ["-w", "walship.send"])
        #expect(manual.output.contains("/usr/share/man/man1/walship.send.1.gz"), "\(manual.output)")
        #expect(FileManager.default.fileExists(atPath: "/usr/share/bash-completion/completions/walship"))
        #expect(FileManager.default.fileExists(atPath: "/lib/systemd/system/walship-receive.service"))
        var spool = stat()
        #expect(stat("/var/lib/walship", &spool) == 0)
        #expect(spool.st_mode & 0o777 == 0o750)
        if let postgres = getpwnam("postgres") { #expect(spool.st_uid == postgres.pointee.pw_uid) }
        // Nothing enabled: no unit is linked into a target.
        #expect(!FileManager.default.fileExists(atPath: "/etc/systemd/system/multi-user.target.wants/walship-receive.service"))

        // What the operator wrote and what the receiver stored survive removal and purge.
        if !hadConfig { try Data("[receive]\nspool = \"/var/lib/walship\"\n".utf8).write(to: URL(fileURLWithPath: configPath)) }
        try Data("wal".utf8).write(to: URL(fileURLWithPath: spoolMarker))
        try run("/usr/bin/dpkg", ["--remove", "walship"], timeout: 120)
        #expect(!FileManager.default.fileExists(atPath: "/usr/bin/walship"))
        #expect(FileManager.default.fileExists(atPath: configPath) && FileManager.default.fileExists(atPath: spoolMarker))
        let purged = try run("/usr/bin/dpkg", ["--purge", "walship"], timeout: 120)
        #expect(purged.output.contains("kept"), "\(purged.output)")
        #expect(FileManager.default.fileExists(atPath: configPath) && FileManager.default.fileExists(atPath: spoolMarker))
        #expect(!FileManager.default.fileExists(atPath: "/etc/walship/walship.toml.example"), "conffiles go with a purge")
    }
}
