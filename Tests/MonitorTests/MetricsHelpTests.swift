import Foundation
import StatusModel
import StatusTestSupport
import Testing

@testable import Monitor

/// Every metric family on `/metrics` says what it is: `# HELP` and `# TYPE` before its first sample, as
/// `promtool check metrics` requires.
@Suite struct MetricsHelpTests {
    /// A receiver with everything set that has a metric: certificates, an alert, a fence, a standby, the mode.
    static func fullReceiver() -> StatusDocument {
        let at = Date(timeIntervalSince1970: 1_800_000_000)
        let alert = StatusDocument.ActiveAlert(
            condition: "lag_seconds", severity: "warning", system: "7301", since: at, message: "behind")
        var status = sampleReceiver(durableBehindBytes: 1 << 20, seconds: 1.5, alerts: [alert])
        status.certificates = [.init(use: "link", path: "/etc/walship/receiver.crt", subject: "CN=dr", notValidAfter: at)]
        status.systems[0].link.lastMessageAgeSeconds = 0.5
        status.systems[0].link.lastPrimaryMessageAgeSeconds = 0.6
        status.systems[0].clockSkewSeconds = -0.01
        status.systems[0].fence = .init(promotedAt: at, promotedTimeline: 2, replayedLSN: "0/4F00000")
        status.systems[0].standbys = [.init(name: "dr-standby", connected: true, replayedLSN: "0/4F00000", updatedAt: at)]
        status.systems[0].mode = .init(mode: "sync", since: at, synchronousRequested: true)
        return status
    }

    static let rendered = [
        ("receiver", MetricsPublisher().render(fullReceiver())), ("sender", MetricsPublisher().render(sampleSender())),
    ]

    @Test(arguments: rendered.map(\.0))
    func everyFamilyHasHelpAndTypeBeforeItsSamples(role: String) throws {
        let text = try #require(Self.rendered.first { $0.0 == role }).1
        var help: [String: String] = [:]
        var type: [String: String] = [:]
        var sampled: Set<String> = []
        for line in text.split(separator: "\n").map(String.init) {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            if line.hasPrefix("# HELP ") {
                #expect(words.count == 4 && !words[3].isEmpty, "\(role): empty help: \(line)")
                #expect(help[words[2]] == nil && !sampled.contains(words[2]), "\(role): HELP repeated or after samples: \(line)")
                help[words[2]] = words.count == 4 ? words[3] : ""
            } else if line.hasPrefix("# TYPE ") {
                #expect(type[words[2]] == nil && !sampled.contains(words[2]), "\(role): TYPE repeated or after samples: \(line)")
                type[words[2]] = words.count > 3 ? words[3] : ""
            } else if !line.hasPrefix("#") {
                let family = String(line.prefix { $0 != "{" && $0 != " " })
                #expect(help[family] != nil, "\(role): \(family) has a sample before (or without) its # HELP line")
                #expect(type[family] != nil, "\(role): \(family) has a sample before (or without) its # TYPE line")
                sampled.insert(family)
            }
        }
        #expect(sampled.count > 10, "\(role): \(text)")
        // The type and help are the family's own.
        for family in MetricFamily.all where sampled.contains(family.name) {
            #expect(type[family.name] == family.kind.rawValue, "\(family.name)")
            #expect(help[family.name] == family.help, "\(family.name)")
        }
    }

    /// The two samples together publish every family, so the check above covers them all.
    @Test func theSamplesCoverEveryFamily() {
        let names = Set(
            Self.rendered.flatMap { $0.1.split(separator: "\n").filter { !$0.hasPrefix("#") } }.map {
                String($0.prefix { $0 != "{" && $0 != " " })
            })
        #expect(
            Set(MetricFamily.all.map(\.name)).subtracting(names).isEmpty,
            "never published: \(Set(MetricFamily.all.map(\.name)).subtracting(names).sorted())")
        #expect(
            names.subtracting(MetricFamily.all.map(\.name)).isEmpty,
            "not in MetricFamily.all: \(names.subtracting(MetricFamily.all.map(\.name)).sorted())")
        #expect(Set(MetricFamily.all.map(\.name)).count == MetricFamily.all.count)
    }

    /// docs/monitoring.md's table names every family.
    @Test func theMonitoringGuideListsEveryFamily() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let guide = try String(contentsOf: root.appendingPathComponent("docs/monitoring.md"), encoding: .utf8)
        for family in MetricFamily.all {
            #expect(guide.contains("`\(family.name)`"), "docs/monitoring.md does not list \(family.name)")
        }
    }

    static let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Prometheus's own linter, where it is installed (Debian's `prometheus` package brings it): no findings.
    @Test(.enabled(if: promtool != nil, "promtool is not installed"), arguments: rendered.map(\.0))
    func promtoolFindsNothing(role: String) throws {
        let promtool = try #require(Self.promtool)
        let text = try #require(Self.rendered.first { $0.0 == role }).1
        let input = FileManager.default.temporaryDirectory.appendingPathComponent("walship-metrics-\(UUID().uuidString).txt")
        try Data(text.utf8).write(to: input)
        defer { try? FileManager.default.removeItem(at: input) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: promtool)
        process.arguments = ["check", "metrics"]
        process.standardInput = try FileHandle(forReadingFrom: input)
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "promtool check metrics (\(role)): \(said)")
        #expect(said.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "promtool check metrics (\(role)): \(said)")
    }
}
