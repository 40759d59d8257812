"""One event's station traces: records found, channel set chosen, merged, rotated, resampled, aligned, written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..resample import resample_trace
from .events import station_picks
from .records import Event, IngestConfig, IngestSummary, Pick
from .waveforms import WaveformIndex, choose_channels, merge_component

__all__ = ["EventIngester"]

#: seconds of data kept around the window while merging and resampling (edge effects of the filters)
RESAMPLE_PAD = 2.0


class EventIngester:
    """Writes the station traces of events, one 3-component trace per picked station.

    Per station: from ``window_before`` s before its first pick to ``window_after`` s after its last pick, cut
    to the data available; the channel set with Z and two horizontals (:func:`~.waveforms.choose_channels`);
    records merged (:func:`~.waveforms.merge_component`); Z/1/2 rotated with an inventory; every component
    resampled with annotate's resampler (:func:`~seisbench_xlstm.data.resample.resample_trace`) and aligned on
    the Z sample grid, so ``trace_start_time`` is the time of sample 0.

    :ivar rows: metadata of the traces written (dicts handed to the writer).
    :ivar stations: ``NET.STA`` of the stations written.
    """

    def __init__(self, index: WaveformIndex, cfg: IngestConfig, writer, summary: IngestSummary, inventory=None):
        self.index = index
        self.cfg = cfg
        self.writer = writer
        self.summary = summary
        self.inventory = inventory
        self.target = float(cfg.sampling_rate)
        self.rows: list[dict] = []
        self.stations: set[str] = set()

    # ------------------------------------------------------------------ per event
    def ingest(self, ev: Event):
        per_station = station_picks(ev, self.summary)
        if not per_station:
            self.summary.skip("event", ev.event_id, "no P or S pick")
            return
        times = [p.time for s in per_station.values() for p in s.values()]
        picked = {sta for (_, sta) in per_station}
        for net, sta in sorted(self.index.stations_between(min(times) - self.cfg.window_before,
                                                           max(times) + self.cfg.window_after)):
            if sta not in picked:
                self.summary.note("waveforms without picks", f"{ev.event_id} {net}.{sta}", "station recorded, not picked")
        for (net, sta), phases in sorted(per_station.items()):
            self._station(ev, net, sta, phases)

    # ------------------------------------------------------------------ per station
    def _station(self, ev: Event, net: str, sta: str, phases: dict[str, Pick]):
        item = f"{ev.event_id} {net + '.' if net else ''}{sta}"
        times = [p.time for p in phases.values()]
        t0, t1 = min(times) - self.cfg.window_before, max(times) + self.cfg.window_after
        traces = self._records(sta, net, t0, t1)
        if not traces:
            for p in phases.values():
                self.summary.skip("pick without waveforms", f"{item} {p.label}",
                                  f"no waveform data of station {sta} around {p.time}")
            return
        chosen, reason = choose_channels(traces, {p.channel for p in phases.values()}, self.cfg.allow_incomplete)
        if chosen is None:
            for p in phases.values():
                self.summary.skip("pick without waveforms", f"{item} {p.label}", reason)
            return
        (c_net, c_loc, c_code), comps, orient = chosen
        merged = {}
        for comp, trs in comps.items():
            tr, info = merge_component(trs, t0 - RESAMPLE_PAD, t1 + RESAMPLE_PAD, self.cfg.fill_gaps)
            if tr is None:
                self.summary.skip("trace", item, info)
                return
            for n in info:
                self.summary.note("records merged/filled", item, n)
            merged[comp] = tr
        merged, orientation = self._rotate(merged, orient, item)
        rates = {tr.stats.sampling_rate for tr in merged.values()}
        if len(rates) > 1:
            self.summary.note("mixed sampling rates", item, f"components at {sorted(rates)} Hz, each resampled")
        aligned = self._align(merged, t0, t1, item)
        if aligned is None:
            return
        start, end, data = aligned
        row = self._row(ev, c_net, sta, c_loc, c_code, orientation, start, data.shape[1], max(rates))
        if not self._add_picks(row, phases, item, start, end, data.shape[1]):
            return
        if not np.any(data):
            self.summary.skip("trace", item, "waveform is all zeros")
            return
        self.writer.add_trace(row, data)
        self.rows.append(row)
        self.stations.add(f"{c_net}.{sta}")

    def _records(self, sta: str, net: str, t0, t1) -> list:
        """Traces of the station around [t0, t1], one copy of identical segments found in several files."""
        traces = []
        for path in sorted({e.path for e in self.index.find(sta, net, t0, t1)}):
            st = self.index.read(path)
            traces += [tr for tr in st.select(station=sta) if not net or tr.stats.network == net]
        unique, seen = [], {}
        for tr in traces:
            key = (tr.id, str(tr.stats.starttime), tr.stats.sampling_rate, tr.stats.npts)
            if key in seen and np.array_equal(seen[key], tr.data):
                continue
            seen[key] = tr.data
            unique.append(tr)
        pad = RESAMPLE_PAD
        return [tr for tr in unique if tr.stats.starttime <= t1 + pad and tr.stats.endtime >= t0 - pad]

    def _rotate(self, merged: dict, orient: str, item: str) -> tuple[dict, str]:
        if orient != "Z12":
            return merged, orient
        if self.inventory is None:
            return merged, "Z12 unrotated"
        from obspy import Stream

        try:
            st = Stream([merged["Z"], merged["N"], merged["E"]])
            st.rotate("->ZNE", inventory=self.inventory, components=("Z12",))
            return {c: st.select(component=c)[0] for c in "ZNE"}, "Z12 rotated"
        except Exception as err:  # noqa: BLE001
            self.summary.note("rotation", item, f"failed ({err}); 1/2 stored as N/E unrotated")
            return merged, "Z12 unrotated"

    def _align(self, merged: dict, t0, t1, item: str):
        """Resample every component, then cut them on the Z sample grid: (start, end, data (3, n)) or None."""
        target = self.target
        res = {}
        for comp, tr in merged.items():
            r = resample_trace(tr, target)
            res[comp] = (r.stats.starttime, r.data)
        start = max(max(s for s, _ in res.values()), t0)
        z_start = res["Z"][0]  # snap to the Z samples, so trace_start_time is the time of sample 0
        start = z_start + np.ceil((start - z_start) * target - 1e-6) / target
        end = min(min(s + (len(d) - 1) / target for s, d in res.values()), t1)
        n = int(np.floor((end - start) * target + 1e-6)) + 1
        if n <= 1:
            self.summary.skip("trace", item, "no common time span of the components in the window")
            return None
        data = np.zeros((3, n), dtype=np.float32)
        for ci, comp in enumerate("ZNE"):
            if comp not in res:
                continue
            s, d = res[comp]
            i0 = int(round((start - s) * target))
            seg = d[i0 : i0 + n]
            data[ci, : len(seg)] = seg
        if (end - start) < (t1 - t0) - 1.0 / target:
            self.summary.note(
                "window truncated", item, f"data cover {start - t0:+.1f} s .. {end - t1:+.1f} s of the requested window"
            )
        return start, end, data

    def _row(self, ev: Event, net, sta, loc, code, orientation, start, n, original_rate) -> dict:
        return {
            "source_id": ev.event_id,
            "source_catalog_id": ev.catalog_id,
            "source_origin_time": str(ev.origin_time) if ev.origin_time is not None else None,
            "source_latitude_deg": ev.latitude,
            "source_longitude_deg": ev.longitude,
            "source_depth_km": ev.depth_km,
            "source_magnitude": ev.magnitude,
            "source_magnitude_type": ev.magnitude_type,
            "source_files": ";".join(Path(s).name for s in ev.sources),
            "station_network_code": net,
            "station_code": sta,
            "station_location_code": loc,
            "trace_channel": code,
            "trace_orientation": orientation,
            "trace_start_time": str(start),
            "trace_sampling_rate_hz": self.target,
            "trace_original_sampling_rate_hz": float(original_rate),
            "trace_npts": n,
            "trace_component_order": "ZNE",
        }

    def _add_picks(self, row: dict, phases: dict[str, Pick], item: str, start, end, n: int) -> bool:
        """P and S columns of ``row``; False (trace skipped) when no pick lies inside the data."""
        kept = 0
        for label in ("P", "S"):
            p = phases.get(label)
            row[f"trace_{label}_arrival_sample"] = np.nan
            row[f"trace_{label}_status"] = None
            row[f"trace_{label}_phase"] = None
            if p is None:
                continue
            sample = float(p.time - start) * self.target
            if not 0 <= sample < n:
                self.summary.skip("pick without waveforms", f"{item} {label}",
                                  f"pick at {p.time} outside the recorded data ({start} .. {end})")
                continue
            row[f"trace_{label}_arrival_sample"] = round(sample, 2)
            row[f"trace_{label}_status"] = p.mode or "manual"
            row[f"trace_{label}_phase"] = p.phase
            kept += 1
        if kept == 0:
            self.summary.skip("trace", item, "no pick inside the recorded data")
            return False
        return True
