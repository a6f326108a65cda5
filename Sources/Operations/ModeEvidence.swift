import Foundation
import Spool
import StatusModel

extension PromotionReport {
    /// Reads the system's mode history and judges what may be said about commits the primary acknowledged. An
    /// unreadable history counts as none: the report then claims nothing it cannot prove.
    mutating func judgeLoss(systemDirectory: String, promotedAt: Date) {
        let entries: [ModeHistoryEntry]
        do {
            entries = try ModeHistory.load(systemDirectory: systemDirectory)
        } catch {
            check("mode history read", false, "\(ModeHistory.path(systemDirectory: systemDirectory)): \(error)")
            entries = []
        }
        judgeLoss(history: modeEpisodes(entries), promotedAt: promotedAt)
    }
}

/// The mode entries as the report shows them, each with the receiver-loss rule of the link it came on.
func modeEpisodes(_ entries: [ModeHistoryEntry]) -> [PromotionReport.ModeEpisode] {
    var rule: String?
    var episodes: [PromotionReport.ModeEpisode] = []
    for entry in entries {
        if entry.event == .link { rule = entry.receiverLoss }
        guard let mode = entry.mode else { continue }
        episodes.append(
            .init(
                mode: mode.rawValue, at: entry.at, lsn: entry.lsn, syncState: entry.syncState, receiverLoss: rule,
                exposureBytes: entry.exposureBytes, detail: entry.detail))
    }
    return episodes
}
