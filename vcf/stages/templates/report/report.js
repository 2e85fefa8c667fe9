// Written by vcf. Records script errors and the state of every thumbnail in attributes of <html>, so that
// a headless browser (or a person, through the inspector) can tell the page rendered completely.
(function () {
  "use strict";
  var root = document.documentElement;
  function note(message) {
    var before = root.getAttribute("data-errors");
    root.setAttribute("data-errors", (before ? before + " | " : "") + message);
  }
  window.addEventListener("error", function (event) { note(String(event.message || event)); });
  window.addEventListener("unhandledrejection", function (event) { note("unhandled rejection: " + event.reason); });
  var consoleError = console.error;
  console.error = function () {
    note(Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  function countImages() {
    var images = document.querySelectorAll("main img");
    var loaded = 0, broken = 0;
    for (var i = 0; i < images.length; i++) {
      if (!images[i].complete) continue;
      if (images[i].naturalWidth > 0) loaded++; else broken++;
    }
    root.setAttribute("data-images-total", images.length);
    root.setAttribute("data-images-loaded", loaded);
    root.setAttribute("data-images-broken", broken);
  }
  // Image load and error events do not bubble: listen in the capture phase.
  document.addEventListener("load", function (event) { if (event.target.tagName === "IMG") countImages(); }, true);
  document.addEventListener("error", function (event) { if (event.target.tagName === "IMG") countImages(); }, true);
  window.addEventListener("load", countImages);
  document.addEventListener("DOMContentLoaded", function () {
    countImages();
    var hover = document.getElementById("hover");
    var maps = document.querySelectorAll("svg.map");
    for (var m = 0; m < maps.length; m++) {
      maps[m].addEventListener("mouseover", function (event) {
        var point = event.target;
        if (point.tagName !== "circle") return;
        var image = hover.querySelector("img");
        var thumb = point.getAttribute("data-t");
        image.hidden = !thumb;
        if (thumb) image.src = thumb;
        hover.querySelector("span").textContent = point.getAttribute("data-i");
        hover.style.left = (event.clientX + 14) + "px";
        hover.style.top = (event.clientY + 14) + "px";
        hover.hidden = false;
      });
      maps[m].addEventListener("mouseout", function () { hover.hidden = true; });
    }
  });
})();
