/**
 * Boot code every page runs (base.html loads it): theme, the live connection (top-bar dot
 * and offline banner), and run-ended notifications from `run_status` events.
 * Page modules import what they need from dom.js, api.js, live.js, toast.js, dialog.js,
 * notify.js and settings.js directly.
 */
import { applyTheme } from "./settings.js";
import { getSocket, onAnyStatus } from "./live.js";
import { noteRunState } from "./notify.js";

applyTheme();
getSocket();
onAnyStatus((msg) => noteRunState(msg));
