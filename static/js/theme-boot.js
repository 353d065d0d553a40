// Runs before first paint (a classic script in <head>, so no flash of the wrong theme):
// resolves the stored theme preference (light, dark or system) to data-theme on <html>.
(function () {
  var pref = "system";
  try {
    var stored = JSON.parse(localStorage.getItem("cpt.settings") || "{}");
    if (stored && typeof stored.theme === "string") pref = stored.theme;
  } catch (e) {
    /* unreadable settings: fall back to the system theme */
  }
  var dark = pref === "dark" || (pref === "system" && matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();
